"""TCD variants for tests/golden/schedulers.py (step args: eta, gamma in the paper).
Run: ~/ref/bin/python tests/golden/schedulers.py --cases examples/custom_scheduler/golden \
         --out tests/fixtures/custom_scheduler tcd
TCDScheduler takes its timesteps from an original_inference_steps-long schedule
(default 50), so no case asks for more steps than that; 3, 4 and 7 steps pick
indices off a non-integer stride. timestep_spacing, steps_offset, clip_sample and
timestep_scaling are accepted but unused by diffusers' TCDScheduler: the
"trailing" and "linspace" variants check that the plugin ignores them too.
"""
CLASS = "TCDScheduler"
STEPS = [1, 2, 3, 4, 7, 25, 50]
# Stable Diffusion 1.5's scheduler_config.json values that TCDScheduler reads
SD15 = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
        "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1}
VARIANTS = [
    ("defaults", {}, {}),  # diffusers' defaults, eta = 0.3 included
    ("sd15_eta0", SD15, {"eta": 0.0}),
    ("sd15_eta03", SD15, {"eta": 0.3}),
    ("sd15_eta1", SD15, {"eta": 1.0}),
    ("v_pred", dict(SD15, prediction_type="v_prediction"), {"eta": 0.3}),
    ("orig50_linear_sample", {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02,
                              "original_inference_steps": 50, "prediction_type": "sample"},
     {"eta": 0.5}),
    ("orig64", dict(SD15, original_inference_steps=64), {"eta": 0.3}),
    ("trailing", dict(SD15, timestep_spacing="trailing", clip_sample=True,
                      timestep_scaling=5.0), {"eta": 0.3}),
    ("linspace", dict(SD15, timestep_spacing="linspace"), {"eta": 0.0}),
    ("cos", {"beta_schedule": "squaredcos_cap_v2"}, {"eta": 0.3}),
    ("zsnr_v", dict(SD15, rescale_betas_zero_snr=True, prediction_type="v_prediction"),
     {"eta": 0.3}),
    ("trained", {"num_train_timesteps": 100,
                 "trained_betas": [round(0.001 + i * 0.0002, 6) for i in range(100)]},
     {"eta": 0.8}),  # float32 (1 - eta) * t_prev: floor(0.2f * 5) = 1, in double 0
]
