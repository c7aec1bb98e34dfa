"""DEISMultistepScheduler variants for tests/golden/schedulers.py."""
CLASS = "DEISMultistepScheduler"
SD = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}
VARIANTS = [
    ("sd", dict(SD, steps_offset=1, timestep_spacing="leading"), {}),
    ("order3_linspace", dict(solver_order=3), {}),
    ("karras_v_order3", dict(SD, use_karras_sigmas=True, prediction_type="v_prediction",
                             solver_order=3), {}),
    ("exp_sample", dict(SD, use_exponential_sigmas=True, prediction_type="sample",
                        lower_order_final=False), {}),
    ("cos_trailing_order1", dict(beta_schedule="squaredcos_cap_v2", timestep_spacing="trailing",
                                 solver_order=1), {}),
    ("trained_order3", {"num_train_timesteps": 100, "solver_order": 3,
                        "trained_betas": [round(0.001 + i * 0.0002, 6) for i in range(100)]}, {}),
]
