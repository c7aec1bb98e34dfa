"""KDPM2 ancestral (DPM2 a) variants for tests/golden/schedulers.py (stochastic: every
correction step draws noise). Four variants keep the fixture small; the schedule code
is shared with dpm2, whose cases cover the linear schedule.

squaredcos_cap_v2 runs with leading spacing: with linspace or trailing its first sigma
(about 2e4) makes diffusers' float32 sigma_down 0 at 2 steps, and the step NaN.
"""
CLASS = "KDPM2AncestralDiscreteScheduler"
SD = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}
VARIANTS = [
    ("sd", dict(SD), {}),
    ("karras", dict(SD, use_karras_sigmas=True), {}),
    ("cos_leading_v", {"beta_schedule": "squaredcos_cap_v2", "timestep_spacing": "leading",
                       "steps_offset": 1, "prediction_type": "v_prediction"}, {}),
    ("trained_trailing_exponential", {"num_train_timesteps": 100, "timestep_spacing": "trailing",
                                      "use_exponential_sigmas": True,
                                      "trained_betas": [round(0.001 + i * 0.0002, 6)
                                                        for i in range(100)]}, {}),
]
