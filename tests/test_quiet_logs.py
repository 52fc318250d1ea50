"""The stage-log filters drop Lightning's advertising and MLflow's SQLAlchemy deprecation, and nothing else."""

import logging
import warnings

from support import mlflow_db

from flows.quiet import TIP_MARKER, quiet_third_party


def test_lightning_tips_are_dropped_other_info_kept(caplog):
    quiet_third_party()
    quiet_third_party()  # idempotent
    log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    with caplog.at_level(logging.INFO, logger=log.name):
        log.info(f"{TIP_MARKER} For seamless cloud logging, try installing [litlogger]")
        log.info("GPU available: False, used: False")
    assert [r.getMessage() for r in caplog.records] == ["GPU available: False, used: False"]


def test_only_mlflow_store_sqlalchemy_deprecations_are_ignored():
    from sqlalchemy.exc import SADeprecationWarning

    quiet_third_party()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet_third_party()  # re-installs its filter in front of "always"
        warnings.warn_explicit(
            "noload is deprecated",
            SADeprecationWarning,
            "sqlalchemy_store.py",
            1,
            module="mlflow.store.tracking.sqlalchemy_store",
        )
        warnings.warn_explicit("noload is deprecated", SADeprecationWarning, "x.py", 1, module="ours")
        warnings.warn_explicit(
            "other", DeprecationWarning, "sqlalchemy_store.py", 1, module="mlflow.store.tracking.sqlalchemy_store"
        )
    assert [(w.category, str(w.message)) for w in seen] == [
        (SADeprecationWarning, "noload is deprecated"),
        (DeprecationWarning, "other"),
    ]


def test_mlflow_pyfunc_advice_is_ignored_other_user_warnings_kept():
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet_third_party()
        for msg in (
            "\x1b[33mAdd type hints to the `predict` method to enable data validation",
            "\x1b[1;33mAn input example was not provided when logging the model.",
        ):
            warnings.warn_explicit(
                msg, UserWarning, "data_validation.py", 1, module="mlflow.pyfunc.utils.data_validation"
            )
        warnings.warn_explicit("Add type hints to the `predict` method", UserWarning, "x.py", 1, module="ours")
    assert [str(w.message) for w in seen] == ["Add type hints to the `predict` method"]


def test_lightnings_leafspec_deprecation_is_ignored_other_future_warnings_kept():
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet_third_party()
        msg = "`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec)` instead."
        warnings.warn_explicit(msg, FutureWarning, "_pytree.py", 21, module="lightning.pytorch.utilities._pytree")
        warnings.warn_explicit(msg, FutureWarning, "x.py", 1, module="ours")
        warnings.warn_explicit("other", FutureWarning, "_pytree.py", 21, module="lightning.pytorch.utilities._pytree")
    assert [str(w.message) for w in seen] == [msg, "other"]


def test_model_logging_advice_is_muted_although_mlflow_resets_the_filters(tmp_path, monkeypatch):
    """mlflow.pyfunc.log_model puts simplefilter("once", UserWarning) in front of every filter (its
    filter_user_warnings_once), so the global filter alone lets the type-hint advice through (the control); the
    context around the call drops it and passes other warnings on."""
    import mlflow

    from flows.quiet import mlflow_advice_muted
    from flows.tracking import PYFUNC_CODE

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_db.sqlite_uri(tmp_path / "mlflow.db"))  # restored after the test
    monkeypatch.chdir(tmp_path)  # the Default experiment's artifacts go to ./mlruns: not into the checkout
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "model.json").write_text("{}")

    def log():
        with mlflow.start_run():
            mlflow.pyfunc.log_model(
                name="g",
                python_model=str(PYFUNC_CODE),
                artifacts={"checkpoint": str(tmp_path / "ckpt")},
                pip_requirements=["torch"],
            )

    def advice(seen):
        return [w for w in seen if "Add type hints" in str(w.message)]

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet_third_party()
        log()
    assert advice(seen), "control: MLflow no longer resets the filters; the context may be unnecessary"
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet_third_party()
        with mlflow_advice_muted():
            log()
            warnings.warn("ours", UserWarning, stacklevel=1)
    assert not advice(seen) and [str(w.message) for w in seen if str(w.message) == "ours"] == ["ours"]


def test_transformers_torchvision_fallback_note_is_dropped_other_lines_kept(caplog):
    quiet_third_party()
    log = logging.getLogger("transformers.utils.import_utils")
    with caplog.at_level(logging.INFO, logger=log.name):
        log.warning(
            "`CLIPImageProcessor` requires torchvision (not installed); falling back to `CLIPImageProcessorPil`"
        )
        log.warning("something else")
    assert [r.getMessage() for r in caplog.records] == ["something else"]


def test_dvc_repro_advice_is_dropped_from_the_stage_log_other_lines_kept(tmp_path, monkeypatch):
    """A real `dvc repro` of a toy project's stage: DVC's closing advice (git add / autostage / dvc push) is in its
    own output, and not in the lines the flow logs; the stage's own lines and DVC's other lines are."""
    import subprocess
    import sys

    from support.pipeline import make_toy_project, toy_env

    from flows.dvc_ops import repro_stage, tool_env

    project = make_toy_project(tmp_path / "proj")
    env = {**tool_env(), **toy_env()}
    raw = subprocess.run(
        [sys.executable, "-m", "dvc", "repro", "prepare"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    advice = [
        "To track the changes with git, run:",
        "git add ",
        "To enable auto staging, run:",
        "dvc config core.autostage true",
        "Use `dvc push` to send your updates to remote storage.",
    ]
    assert all(a in raw for a in advice), raw  # DVC does give the advice: the filter has something to drop
    logged: list[str] = []
    monkeypatch.setenv("PYTHONPATH", toy_env()["PYTHONPATH"])  # repro_stage's environment: toy stages from tests/
    result = repro_stage("validate", project, logged.append)
    text = "\n".join(logged)
    assert result.ran == ["validate"] and "Running stage 'validate'" in text
    assert "Updating lock file 'dvc.lock'" in text
    assert not [line for line in logged if any(a in line for a in advice)], text
