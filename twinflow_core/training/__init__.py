"""Training with Lightning: config schema (config.py), its loading and checks (config_checks.py), the Hydra
composition of conf/ (compose.py), batches (data.py), the module (module.py), callbacks (callbacks.py), the parts of
a phase for an in-house net or a latent diffusers model (parts.py, latent.py), where the processes run (launch.py,
fsdp.py) and one phase end to end (run.py). Importing this package does not import Lightning; the submodules
data/module/callbacks/parts/run do, so the stage entry points import them inside their functions.
"""
