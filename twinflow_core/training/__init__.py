"""Training with Lightning: config schema (config.py), its loading and checks (config_checks.py), the Hydra
composition of conf/ (compose.py), batches (data.py), the module (module.py), callbacks (callbacks.py) and one phase
end to end (run.py). Importing this package does not import Lightning; the submodules data/module/callbacks/run
do, so the stage entry points import them inside their functions.
"""
