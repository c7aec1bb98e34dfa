"""DDIM variants for tests/golden/schedulers.py (step args: eta)."""
CLASS = "DDIMScheduler"
SD = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}
VARIANTS = [
    ("sd15", dict(SD, clip_sample=False, set_alpha_to_one=False, steps_offset=1), {}),
    ("linear_clip", {"clip_sample": True}, {}),
    ("cos_v_trailing", dict(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction",
                            timestep_spacing="trailing", clip_sample=False), {}),
    ("linspace_sample", dict(SD, timestep_spacing="linspace", prediction_type="sample",
                             clip_sample=True, clip_sample_range=2.0), {}),
    ("eta", dict(SD, clip_sample=False, set_alpha_to_one=False, steps_offset=1), {"eta": 0.7}),
    ("zsnr_v", dict(SD, rescale_betas_zero_snr=True, prediction_type="v_prediction",
                    timestep_spacing="trailing", clip_sample=False), {}),
    ("trained", {"num_train_timesteps": 100, "clip_sample": False,
                 "trained_betas": [round(0.001 + i * 0.0002, 6) for i in range(100)]}, {}),
]
