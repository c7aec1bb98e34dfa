"""DPMSolverMultistepScheduler variants for tests/golden/schedulers.py.

Karras or lu sigmas over a schedule whose top sigmas map to one repeated
first timestep (squaredcos_cap_v2, or zero terminal SNR) fail in diffusers
itself (its step index starts at the second repeat and runs off the end), so
the truncated karras timesteps of a "squaredcos_cap_v2" schedule are covered
with trained betas, which keep that beta_schedule name. Steps 25 and 50
are past lower_order_final's 15-step threshold.
"""
CLASS = "DPMSolverMultistepScheduler"
SD = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}
TRAINED = [round(0.001 + i * 0.0002, 6) for i in range(100)]
VARIANTS = [
    ("sd_2m", dict(SD, steps_offset=1, timestep_spacing="leading"), {}),
    ("karras_heun_v", dict(SD, use_karras_sigmas=True, solver_type="heun",
                           prediction_type="v_prediction"), {}),
    ("order3_euler_final", dict(solver_order=3, euler_at_final=True, lower_order_final=False), {}),
    ("sde_pp_exp", dict(SD, algorithm_type="sde-dpmsolver++", use_exponential_sigmas=True), {}),
    ("sde_pp3_zsnr_v", dict(SD, algorithm_type="sde-dpmsolver++", solver_order=3,
                            rescale_betas_zero_snr=True, prediction_type="v_prediction",
                            timestep_spacing="trailing"), {}),
    ("dpmsolver3_sample", dict(SD, algorithm_type="dpmsolver", solver_order=3, solver_type="heun",
                               final_sigmas_type="sigma_min", prediction_type="sample"), {}),
    ("sde_dpmsolver_cos_clip", dict(beta_schedule="squaredcos_cap_v2", algorithm_type="sde-dpmsolver",
                                    solver_type="heun", final_sigmas_type="sigma_min",
                                    lambda_min_clipped=-5.1, timestep_spacing="trailing"), {}),
    ("lu_v", dict(SD, use_lu_lambdas=True, prediction_type="v_prediction"), {}),
    ("trained_karras_trunc", {"num_train_timesteps": 100, "trained_betas": TRAINED,
                              "beta_schedule": "squaredcos_cap_v2", "use_karras_sigmas": True,
                              "lower_order_final": False}, {}),
]
