"""PNDM variants for tests/golden/schedulers.py.

PRK variants start at 4 steps: the PRK warm-up (skip_prk_steps=False,
diffusers' default) fails in diffusers itself below 4 steps.
"""
CLASS = "PNDMScheduler"
PRK = [4, 7, 10, 25, 50]
SD = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}
TRAINED = {"num_train_timesteps": 100,
           "trained_betas": [round(0.001 + i * 0.0002, 6) for i in range(100)]}
VARIANTS = [
    ("sd_plms", dict(SD, skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1), {}),
    ("prk_default", {}, {}, PRK),
    ("prk_sd_v_one", dict(SD, prediction_type="v_prediction", set_alpha_to_one=True), {}, PRK),
    ("plms_cos_trailing", dict(beta_schedule="squaredcos_cap_v2", timestep_spacing="trailing",
                               skip_prk_steps=True), {}),
    ("plms_linspace_v", dict(SD, timestep_spacing="linspace", prediction_type="v_prediction",
                             skip_prk_steps=True, set_alpha_to_one=True), {}),
    ("prk_linspace", dict(SD, timestep_spacing="linspace"), {}, PRK),
    ("plms_trained", dict(TRAINED, skip_prk_steps=True), {}),
    ("prk_trained_trailing", dict(TRAINED, timestep_spacing="trailing"), {}, PRK),
]
