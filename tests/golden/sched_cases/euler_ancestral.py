"""Euler ancestral variants for tests/golden/schedulers.py (noise every step)."""
CLASS = "EulerAncestralDiscreteScheduler"
SD = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}
VARIANTS = [
    ("sd15", dict(SD, timestep_spacing="leading", steps_offset=1), {}),
    ("linspace", {}, {}),
    ("cos_v_trailing", dict(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction",
                            timestep_spacing="trailing"), {}),
    ("zsnr_v_trailing", dict(SD, rescale_betas_zero_snr=True, prediction_type="v_prediction",
                             timestep_spacing="trailing"), {}),
    ("trained_leading", {"num_train_timesteps": 100, "timestep_spacing": "leading",
                         "steps_offset": 2,
                         "trained_betas": [round(0.001 + i * 0.0002, 6) for i in range(100)]}, {}),
]
