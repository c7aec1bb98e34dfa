"""LMS variants for tests/golden/schedulers.py (step args: order)."""

CLASS = "LMSDiscreteScheduler"
SD = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}
VARIANTS = [
    ("sd15", dict(SD, timestep_spacing="leading", steps_offset=1), {}),
    ("linspace", {}, {}),
    ("karras", dict(SD, use_karras_sigmas=True), {}),
    ("exp_v_trailing", dict(SD, use_exponential_sigmas=True, prediction_type="v_prediction",
                            timestep_spacing="trailing"), {}),
    ("cos_sample_order2", dict(beta_schedule="squaredcos_cap_v2", prediction_type="sample"),
     {"order": 2}),
    ("order6_karras_v", dict(SD, use_karras_sigmas=True, prediction_type="v_prediction",
                             timestep_spacing="leading", steps_offset=1), {"order": 6}),
    ("trained_order1", {"num_train_timesteps": 100,
                        "trained_betas": [round(0.001 + i * 0.0002, 6) for i in range(100)]},
     {"order": 1}),
]
