"""Euler variants for tests/golden/schedulers.py (step args: s_churn, s_tmin,
s_tmax, s_noise)."""
CLASS = "EulerDiscreteScheduler"
SD = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}
VARIANTS = [
    ("sd15", dict(SD, timestep_spacing="leading", steps_offset=1), {}),
    ("linspace_v", {"prediction_type": "v_prediction"}, {}),
    ("karras_leading", dict(SD, use_karras_sigmas=True, timestep_spacing="leading",
                            steps_offset=1), {}),
    ("exp_bounds_trailing", dict(SD, use_exponential_sigmas=True, sigma_min=0.05, sigma_max=10.0,
                                 timestep_spacing="trailing", final_sigmas_type="sigma_min"), {}),
    ("loglinear_cos_sample", dict(beta_schedule="squaredcos_cap_v2", interpolation_type="log_linear",
                                  prediction_type="sample"), {}),
    ("zsnr_v_trailing", dict(SD, rescale_betas_zero_snr=True, prediction_type="v_prediction",
                             timestep_spacing="trailing"), {}),
    ("continuous_v_karras", dict(SD, prediction_type="v_prediction", timestep_type="continuous",
                                 use_karras_sigmas=True, sigma_min=0.002, sigma_max=80.0), {}),
    ("churn", dict(SD, timestep_spacing="leading", steps_offset=1),
     {"s_churn": 1.0, "s_tmin": 0.5, "s_tmax": 10.0, "s_noise": 1.003}),
    ("trained_loglinear_v", {"num_train_timesteps": 100, "interpolation_type": "log_linear",
                             "prediction_type": "v_prediction",
                             "trained_betas": [round(0.001 + i * 0.0002, 6) for i in range(100)]},
     {}),
]
