"""UniPCMultistepScheduler variants for tests/golden/schedulers.py.

With final_sigmas_type "zero", diffusers returns NaN or inf for bh1, for
predict_x0=False and for lower_order_final=False (its last update multiplies
0 by inf or divides by a zero step ratio), so those run with "sigma_min".
"""
CLASS = "UniPCMultistepScheduler"
SD = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}
VARIANTS = [
    ("sd_bh2", dict(SD, steps_offset=1, timestep_spacing="leading"), {}),
    ("bh1_order3_sigma_min", dict(solver_type="bh1", solver_order=3,
                                  final_sigmas_type="sigma_min"), {}),
    ("karras_v_order3", dict(SD, use_karras_sigmas=True, prediction_type="v_prediction",
                             solver_order=3, final_sigmas_type="sigma_min"), {}),
    ("karras_sigma_range", dict(SD, use_karras_sigmas=True, sigma_min=0.1, sigma_max=10.0), {}),
    ("exp_noise_sample", dict(SD, predict_x0=False, final_sigmas_type="sigma_min",
                              use_exponential_sigmas=True, prediction_type="sample"), {}),
    ("cos_no_corrector", dict(beta_schedule="squaredcos_cap_v2", disable_corrector=[0, 2, 5],
                              lower_order_final=False, final_sigmas_type="sigma_min",
                              timestep_spacing="trailing", solver_order=3), {}),
    ("zsnr_v_trailing", dict(SD, rescale_betas_zero_snr=True, prediction_type="v_prediction",
                             timestep_spacing="trailing"), {}),
    ("trained", {"num_train_timesteps": 100, "solver_order": 1,
                 "trained_betas": [round(0.001 + i * 0.0002, 6) for i in range(100)]}, {}),
]
