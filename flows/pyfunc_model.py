"""The registered model: an MLflow pyfunc that turns prompts into images at 1 NFE.

Logged as *models-from-code*: MLflow stores this file's source and runs it at load time, so no pickled
code object is stored. The weights travel as the artifact `checkpoint` (model.safetensors + model.json,
written by twinflow_core.nets.generator.save_generator) and are read with twinflow_core.loader.load_generator.

    m = mlflow.pyfunc.load_model("models:/twinflow-shapes@champion")
    images = m.predict(["a red circle above a blue square"])            # uint8 (N, H, W, 3)
    images = m.predict(df_with_prompt_column, params={"nfe": 2, "seed": 1})
"""

# Lazy imports: pandas, torch
# (slow to load or not in the base install: only the functions that use them load them)
from __future__ import annotations

import mlflow
import numpy as np
from mlflow.models import set_model

from twinflow_core.files import no_symlinks


def prompts_from_input(model_input) -> list[str]:
    """A list/array of strings, a single string, or a DataFrame ('prompt' column, else the first one)."""
    import pandas as pd

    if isinstance(model_input, pd.DataFrame):
        column = "prompt" if "prompt" in model_input.columns else model_input.columns[0]
        return [str(p) for p in model_input[column].tolist()]
    if isinstance(model_input, pd.Series):
        return [str(p) for p in model_input.tolist()]
    if isinstance(model_input, str):
        return [model_input]
    if isinstance(model_input, np.ndarray):
        return [str(p) for p in model_input.reshape(-1).tolist()]
    return [str(p) for p in model_input]


class TwinflowGenerator(mlflow.pyfunc.PythonModel):
    """Prompts in, images out (uint8, N x H x W x 3). Params: nfe (default 1), seed (default 0)."""

    def load_context(self, context):
        # imported when MLflow loads the model: twinflow_core is on sys.path from the model's code paths by then
        from twinflow_core.loader import load_generator

        # a model in a store on this disk is read in place: a link there would be followed out of the store
        no_symlinks(context.artifacts["checkpoint"], "checkpoint")
        self.generator = load_generator(context.artifacts["checkpoint"])

    def predict(self, context, model_input, params=None):
        params = params or {}
        prompts = prompts_from_input(model_input)
        return self.generator.generate(prompts, nfe=int(params.get("nfe", 1)), seed=int(params.get("seed", 0)))


set_model(TwinflowGenerator())
