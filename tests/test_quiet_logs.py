"""The stage-log filters drop Lightning's advertising and MLflow's SQLAlchemy deprecation, and nothing else."""
import logging
import warnings

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
        warnings.warn_explicit("noload is deprecated", SADeprecationWarning, "sqlalchemy_store.py", 1,
                               module="mlflow.store.tracking.sqlalchemy_store")
        warnings.warn_explicit("noload is deprecated", SADeprecationWarning, "x.py", 1, module="ours")
        warnings.warn_explicit("other", DeprecationWarning, "sqlalchemy_store.py", 1,
                               module="mlflow.store.tracking.sqlalchemy_store")
    assert [(w.category, str(w.message)) for w in seen] == [(SADeprecationWarning, "noload is deprecated"),
                                                           (DeprecationWarning, "other")]


def test_mlflow_pyfunc_advice_is_ignored_other_user_warnings_kept():
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet_third_party()
        for msg in ("\x1b[33mAdd type hints to the `predict` method to enable data validation",
                    "\x1b[1;33mAn input example was not provided when logging the model."):
            warnings.warn_explicit(msg, UserWarning, "data_validation.py", 1, module="mlflow.pyfunc.utils.data_validation")
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

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")  # restored after the test
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "model.json").write_text("{}")

    def log():
        with mlflow.start_run():
            mlflow.pyfunc.log_model(name="g", python_model=str(PYFUNC_CODE),
                                    artifacts={"checkpoint": str(tmp_path / "ckpt")}, pip_requirements=["torch"])

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
            warnings.warn("ours", UserWarning)
    assert not advice(seen) and [str(w.message) for w in seen if str(w.message) == "ours"] == ["ours"]


def test_transformers_torchvision_fallback_note_is_dropped_other_lines_kept(caplog):
    quiet_third_party()
    log = logging.getLogger("transformers.utils.import_utils")
    with caplog.at_level(logging.INFO, logger=log.name):
        log.warning("`CLIPImageProcessor` requires torchvision (not installed); falling back to `CLIPImageProcessorPil`")
        log.warning("something else")
    assert [r.getMessage() for r in caplog.records] == ["something else"]
