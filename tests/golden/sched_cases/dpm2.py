"""KDPM2 (DPM2) variants for tests/golden/schedulers.py (deterministic)."""
CLASS = "KDPM2DiscreteScheduler"
SD = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}
VARIANTS = [
    ("sd", dict(SD), {}),
    ("karras", dict(SD, use_karras_sigmas=True), {}),
    ("linear_leading", {"timestep_spacing": "leading", "steps_offset": 1}, {}),
    ("cos_trailing_v", {"beta_schedule": "squaredcos_cap_v2", "timestep_spacing": "trailing",
                        "prediction_type": "v_prediction"}, {}),
    ("trained_exponential_v", {"num_train_timesteps": 100, "use_exponential_sigmas": True,
                               "prediction_type": "v_prediction",
                               "trained_betas": [round(0.001 + i * 0.0002, 6) for i in range(100)]},
     {}),
]
