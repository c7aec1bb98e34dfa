"""LCM variants for tests/golden/schedulers.py (stochastic: every step but the last draws noise).

timestep_spacing and steps_offset are LCMScheduler config keys that its
set_timesteps ignores; "sample_linear" sets them to show that.
"""
CLASS = "LCMScheduler"
VARIANTS = [
    ("default", {}, {}),
    ("orig100_clip", {"original_inference_steps": 100, "clip_sample": True,
                      "clip_sample_range": 1.5}, {}),
    ("zsnr_v_scaling5", {"rescale_betas_zero_snr": True, "prediction_type": "v_prediction",
                         "timestep_scaling": 5.0}, {}),
    ("sample_linear", {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02,
                       "prediction_type": "sample", "set_alpha_to_one": False,
                       "timestep_spacing": "trailing", "steps_offset": 1}, {}),
    ("cos_orig75", {"beta_schedule": "squaredcos_cap_v2", "original_inference_steps": 75,
                    "timestep_scaling": 1.0}, {}),
    ("trained", {"num_train_timesteps": 100,
                 "trained_betas": [round(0.001 + i * 0.0002, 6) for i in range(100)]}, {}),
]
