"""DDPM variants for tests/golden/schedulers.py (stochastic: every step but t = 0 draws noise)."""
CLASS = "DDPMScheduler"
SD = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}
VARIANTS = [
    ("default", {}, {}),
    ("sd_small_log", dict(SD, variance_type="fixed_small_log", clip_sample=False,
                          steps_offset=1), {}),
    ("cos_large_v_trailing", dict(beta_schedule="squaredcos_cap_v2", variance_type="fixed_large",
                                  prediction_type="v_prediction", timestep_spacing="trailing",
                                  clip_sample=False), {}),
    ("linspace_sample_clip", dict(SD, timestep_spacing="linspace", prediction_type="sample",
                                  clip_sample=True, clip_sample_range=2.0), {}),
    ("zsnr_v", dict(SD, rescale_betas_zero_snr=True, prediction_type="v_prediction",
                    timestep_spacing="trailing", clip_sample=False), {}),
    ("trained_large", {"num_train_timesteps": 100, "variance_type": "fixed_large",
                       "trained_betas": [round(0.001 + i * 0.0002, 6) for i in range(100)]}, {}),
]
