"""Heun variants for tests/golden/schedulers.py (2n - 1 model calls for n steps)."""

CLASS = "HeunDiscreteScheduler"
SD = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}
VARIANTS = [
    ("sd15", dict(SD, timestep_spacing="leading", steps_offset=1), {}),
    ("linspace", {}, {}),
    ("karras", dict(SD, use_karras_sigmas=True), {}),
    ("exp_v_trailing", dict(SD, use_exponential_sigmas=True, prediction_type="v_prediction",
                            timestep_spacing="trailing"), {}),
    ("cos_sample_clip", dict(beta_schedule="squaredcos_cap_v2", prediction_type="sample",
                             clip_sample=True, clip_sample_range=1.5), {}),
    ("trained_v_clip", {"num_train_timesteps": 100, "prediction_type": "v_prediction",
                        "clip_sample": True,
                        "trained_betas": [round(0.001 + i * 0.0002, 6) for i in range(100)]}, {}),
]
