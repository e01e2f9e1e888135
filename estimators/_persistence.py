"""Saving and loading fitted estimators without executing code on load.

A model file is a NumPy ``.npz`` archive (read with ``allow_pickle=False``) holding the fitted arrays and one
JSON document with the format name, the package version, the estimator's class and hyperparameters, the
model specification and scalar fitted attributes. A SHA-256 checksum over the metadata and every array's
name, dtype, shape and bytes detects tampering and truncation.
"""

from __future__ import annotations

import hashlib
import json
import zipfile

import numpy as np

FORMAT = "hme-model"
FORMAT_VERSION = 1


def _digest(meta: dict, arrays: dict) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(meta, sort_keys=True).encode())
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _jsonable(v):
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, tuple):
        return {"tuple": [_jsonable(x) for x in v]}
    if isinstance(v, list):
        return [_jsonable(x) for x in v]
    return v


def _from_json(v):
    if isinstance(v, dict) and set(v) == {"tuple"}:
        return tuple(_from_json(x) for x in v["tuple"])
    if isinstance(v, list):
        return [_from_json(x) for x in v]
    return v


def save_estimator(est, path) -> None:
    from sklearn.utils.validation import check_is_fitted

    import hme

    check_is_fitted(est, "params_")
    params = est.get_params(deep=False)
    if not (params["random_state"] is None or isinstance(params["random_state"], (int, np.integer))):
        params["random_state"] = None  # a RandomState object is not data; the fitted model does not need it
    spec = est._spec
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "hme_version": hme.__version__,
        "estimator": type(est).__name__,
        "params": {k: _jsonable(v) for k, v in params.items()},
        "spec": {
            "tree": _nested_lists(spec.tree.structure),
            "n_features": spec.n_features,
            "n_targets": spec.n_targets,
            "gate": spec.gate,
            "expert": spec.expert,
            "gate_features": None if spec.gate_features is None else list(spec.gate_features),
            "expert_features": None if spec.expert_features is None else list(spec.expert_features),
            "covariance_type": spec.covariance_type,
            "shared_covariance": spec.shared_covariance,
            "laplace_smoothing": spec.laplace_smoothing,
            "expert_df": spec.expert_df,
            "shared_coef": None if spec.shared_coef is None else list(spec.shared_coef),
        },
        "fitted": {
            "n_iter_": est.n_iter_,
            "converged_": est.converged_,
            "lower_bound_": est.lower_bound_,
            "log_likelihood_": est.log_likelihood_,
            "n_features_in_": est.n_features_in_,
            "best_restart_": est.best_restart_,
            "y_1d": bool(getattr(est, "_y_1d", True)),
            "n_outputs_": int(getattr(est, "n_outputs_", 1)),
            **({"grown_structure_": _nested_lists(est.grown_structure_)} if hasattr(est, "grown_structure_") else {}),
        },
    }
    g, e = est.params_
    arrays = {
        "gate_bias": g.bias,
        "gate_weight": g.weight,
        "expert_intercept": e.intercept,
        "expert_coef": e.coef,
        "lower_bounds_": est.lower_bounds_,
    }
    if e.cov is not None:
        arrays["expert_cov"] = e.cov
    if e.df is not None:  # Student-t degrees of freedom
        arrays["expert_df"] = e.df
    if g.cov is not None:  # gate families with covariances (Gaussian gates)
        arrays["gate_cov"] = g.cov
    for name in ("x_min_", "x_max_", "expert_input_min_", "expert_input_max_"):
        if hasattr(est, name):
            arrays[name] = getattr(est, name)
    if hasattr(est, "feature_names_in_"):
        arrays["feature_names_in_"] = np.asarray(est.feature_names_in_, dtype=str)
    if hasattr(est, "classes_"):
        cls = np.asarray(est.classes_)
        arrays["classes_"] = cls.astype(str) if cls.dtype == object else cls
        meta["fitted"]["classes_kind"] = "object" if cls.dtype == object else "array"
    meta["checksum"] = _digest(meta, arrays)
    with open(path, "wb") as f:
        np.savez(f, __meta__=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **arrays)


def _nested_lists(v):
    return [_nested_lists(x) for x in v]


def _tuplify(v):
    return tuple(_tuplify(x) for x in v) if isinstance(v, list) else v


def load(path):
    """Load an estimator saved with ``est.save(path)``; raises ``ValueError`` for a corrupt or foreign file."""
    import hme
    from hme.params import ExpertParams, GateParams, HMEParams

    try:
        with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
        raise ValueError(
            f"{path!s} is not a readable hme model file (truncated or not an .npz archive): {err}"
        ) from None
    if "__meta__" not in arrays:
        raise ValueError(f"{path!s} is not an hme model file (no metadata)")
    try:
        meta = json.loads(arrays.pop("__meta__").tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path!s}: the model metadata is corrupt ({err})") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path!s} is not an hme model file (format {meta.get('format')!r})")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"{path!s} was written by a newer hme ({meta.get('hme_version')}); upgrade to load it")
    checksum = meta.pop("checksum", None)
    if checksum != _digest(meta, arrays):
        raise ValueError(f"{path!s}: checksum mismatch, the file was modified or damaged")
    classes = {"HMERegressor": hme.HMERegressor, "HMEClassifier": hme.HMEClassifier}
    if meta["estimator"] not in classes:
        raise ValueError(f"{path!s}: unknown estimator {meta['estimator']!r}")
    params = {k: _from_json(v) for k, v in meta["params"].items()}
    est = classes[meta["estimator"]](**params)
    s = meta["spec"]
    tree = hme.TreeSpec.from_nested(_tuplify(s["tree"]))
    est._spec = hme.ModelSpec(
        tree=tree,
        n_features=s["n_features"],
        n_targets=s["n_targets"],
        gate=tuple(s["gate"]) if isinstance(s["gate"], list) else s["gate"],
        expert=s["expert"],
        gate_features=None if s["gate_features"] is None else tuple(s["gate_features"]),
        expert_features=None if s["expert_features"] is None else tuple(s["expert_features"]),
        covariance_type=s["covariance_type"],
        shared_covariance=s["shared_covariance"],
        laplace_smoothing=s["laplace_smoothing"],
        expert_df=s.get("expert_df"),
        shared_coef=None if s.get("shared_coef") is None else tuple(s["shared_coef"]),
    )
    est.params_ = HMEParams(
        GateParams(arrays["gate_bias"], arrays["gate_weight"], arrays.get("gate_cov")),
        ExpertParams(arrays["expert_intercept"], arrays["expert_coef"], arrays.get("expert_cov"),
                     arrays.get("expert_df")),
    )
    f = meta["fitted"]
    for k in (
        "n_iter_",
        "converged_",
        "lower_bound_",
        "log_likelihood_",
        "n_features_in_",
        "best_restart_",
        "n_outputs_",
    ):
        setattr(est, k, f[k])
    est._y_1d = f["y_1d"]
    est.lower_bounds_ = arrays["lower_bounds_"]
    if "grown_structure_" in f:  # a grown tree (depth=None)
        est.grown_structure_ = _tuplify(f["grown_structure_"])
    for name in ("x_min_", "x_max_", "expert_input_min_", "expert_input_max_"):
        if name in arrays:
            setattr(est, name, arrays[name])
    if "feature_names_in_" in arrays:
        est.feature_names_in_ = arrays["feature_names_in_"].astype(object)
    if "classes_" in arrays:
        c = arrays["classes_"]
        est.classes_ = c.astype(object) if f.get("classes_kind") == "object" else c
    return est
