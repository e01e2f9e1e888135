"""Out-of-core ``fit`` and online ``partial_fit`` for :class:`HMERegressor` (:mod:`hme.streaming` underneath).

Thin like the rest: check what the streamed engines cover, translate the ridges with the first pass's moments
(exactly what the in-memory ``fit`` computes from the rows), call the core, store NumPy attributes.
"""

from __future__ import annotations

import jax
import numpy as np
from sklearn.utils import check_random_state

import hme
from hme import sources, streaming
from hme.fitting import degeneracy
from hme.inference import canonicalize
from hme.pooled import noise_scale_from_moments

from ._base import AUTO_GATE_ALPHA, POOLED_ALPHA, precision_scope


class StreamingMixin:
    """``fit`` on out-of-core data (``chunk_size``) and ``partial_fit`` (online EM) for Gaussian experts under
    softmax gates."""

    def _check_streamable(self, what: str):
        if self.depth is None:
            raise ValueError(f"{what} needs a fixed tree (depth=int); growth (depth=None) holds the data in memory")
        if self.solver != "em":
            raise ValueError(f"{what} runs EM; solver={self.solver!r} is in-memory only")
        if self.gate_features is not None or self.expert_features is not None:
            raise ValueError(f"{what} needs the gates and experts to see every input (gate_features=None, "
                             "expert_features=None)")
        if self.devices not in (1, None):
            raise ValueError(f"{what} runs on one device; devices={self.devices!r} applies to in-memory fits")

    def _stream_spec(self, n_features, n_targets):
        return hme.ModelSpec(tree=self._tree(), n_features=n_features, n_targets=n_targets, gate=self.gate,
                             expert=self.expert, covariance_type=self.covariance_type,
                             shared_covariance=self.shared_covariance,
                             shared_coef=self._resolve_features(self.shared_coef, "shared_coef"))

    def _stream_ridges(self, spec, comoment, total):
        """(alpha per feature, target or None, noise scale or None, gate_alpha) from the centred co-moment matrix
        of [x, y] summed over rows of total weight ``total``: the in-memory fit's translation of
        ``alpha``/``gate_alpha`` (:meth:`HMEBase._expert_ridge`)."""
        p = spec.n_features
        com = np.asarray(comoment, np.float64) / total
        var = np.diagonal(com)[:p]
        var = np.where(var > 0, var, 1.0)
        strength = self._auto_alpha if isinstance(self.alpha, str) else float(self.alpha)
        gate_alpha = (AUTO_GATE_ALPHA * np.concatenate([[1.0], var]) if isinstance(self.gate_alpha, str)
                      else float(self.gate_alpha))
        if strength == 0:
            return 0.0 * var, None, None, gate_alpha
        pooled = np.linalg.lstsq(total * com[:p, :p] + np.diag(POOLED_ALPHA * var), total * com[:p, p:],
                                 rcond=None)[0]
        target = None if self.shrink_to == "zero" else pooled
        return strength * var, target, noise_scale_from_moments(com, p, pooled, self.var_floor), gate_alpha

    def _fit_streamed(self, X, y, sample_weight):
        """EM over the data in chunks of ``chunk_size`` rows (:func:`hme.streaming.fit_em_streaming`)."""
        self._check_streamable("an out-of-core fit")
        source = sources.as_source(X, y, sample_weight)
        chunk = sources.DEFAULT_CHUNK_SIZE if self.chunk_size is None else int(self.chunk_size)
        dtype = np.dtype(getattr(X, "dtype", np.float64))
        dtype = dtype if dtype in (np.float32, np.float64) else np.dtype(np.float64)
        seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        self.n_features_in_ = source.n_features
        self.__dict__.pop("feature_names_in_", None)
        self.n_outputs_, self._y_1d = source.n_targets, source.y_1d
        spec = self._stream_spec(source.n_features, source.n_targets)
        streaming.check_streamable(spec)
        with precision_scope(dtype):
            scan = streaming.scan(source, chunk_size=chunk, dtype=dtype, random_state=seed)
            p = source.n_features
            alpha, target, scale, gate_alpha = self._stream_ridges(spec, scan.comoment, scan.total)
            res = streaming.fit_em_streaming(
                spec, source, chunk_size=chunk, dtype=dtype, n_init=self.n_init, n_candidates=self.n_candidates,
                random_state=seed, max_iter=self.max_iter, tol=self.tol, alpha=alpha, gate_alpha=gate_alpha,
                var_floor=self.var_floor, coef_target=target, coef_scale=scale, scan_result=scan,
                verbose=self.verbose or None)
        self._store_streamed(spec, res.params, scan.x_min, scan.x_max, scan.x_mean, alpha, gate_alpha, target, scale,
                             dtype)
        floor = self.var_floor * np.where(scan.variances()[p:] > 0, scan.variances()[p:], 1.0)
        self._store_diagnostics(res.n_iter, res.converged, res.failed, res.history, res.log_likelihood,
                                res.leaf_mass * scan.n_positive / scan.total, floor)
        self.pass_seconds_, self.chunk_size_ = res.pass_seconds, res.chunk_size
        self._report_fit()
        return self

    def _store_diagnostics(self, n_iter, converged, failed, history, log_likelihood, leaf_counts, floor):
        """The fit record's attributes for one run (``restart_*`` of length 1): a leaf is empty below one sample
        of posterior weight, collapsed when its variances sit on the absolute ``floor`` (m,)."""
        cov = np.asarray(self.params_.experts.cov)
        collapsed = np.all(np.diagonal(cov, axis1=1, axis2=2) <= np.asarray(floor) * (1 + 1e-6), axis=1)
        counts = np.asarray(leaf_counts, np.float64)
        history = np.asarray(history, np.float64)
        self.n_iter_, self.converged_ = int(n_iter), bool(converged)
        self.lower_bounds_ = history[np.isfinite(history)]
        self.lower_bound_ = float(self.lower_bounds_[-1]) if self.lower_bounds_.size else float("nan")
        self.log_likelihood_ = float(log_likelihood)
        self.best_restart_, self.restart_lower_bounds_ = 0, [self.lower_bounds_]
        self.restart_converged_, self.restart_failed_ = np.array([bool(converged)]), np.array([bool(failed)])
        self.restart_leaf_counts_, self.restart_collapsed_ = counts[None], collapsed[None]
        self.restart_degenerate_ = [degeneracy(counts, collapsed)]

    def _store_streamed(self, spec, params, x_min, x_max, x_ref, alpha, gate_alpha, target, scale, dtype):
        """Parameters (canonical leaf order) and the attributes prediction reads. Each expert's input box is the
        whole training range: a streamed fit keeps no per-row posteriors to narrow it."""
        with precision_scope(dtype):
            canon = canonicalize(spec, jax.tree_util.tree_map(lambda a: np.asarray(a, dtype), params), x_ref)
        self.params_ = jax.tree_util.tree_map(lambda a: np.asarray(a, dtype), canon)
        self._spec, self.tree_ = spec, spec.tree
        self.x_min_, self.x_max_ = np.asarray(x_min, dtype), np.asarray(x_max, dtype)
        L = spec.tree.n_leaves
        self.expert_input_min_ = np.broadcast_to(self.x_min_, (L, x_min.shape[0])).copy()
        self.expert_input_max_ = np.broadcast_to(self.x_max_, (L, x_max.shape[0])).copy()
        self.expert_coef_target_ = None if target is None else np.asarray(target, dtype)
        self.expert_coef_scale_ = None if scale is None else np.asarray(scale, dtype)
        a = np.asarray(alpha, np.float64)
        self._penalty = dict(alpha=a if a.ndim == 0 else np.concatenate([[0.0], a]),
                             gate_alpha=np.asarray(gate_alpha, np.float64), coef_target=target, coef_scale=scale)

    def partial_fit(self, X, y, sample_weight=None):
        """Online EM on one batch (:class:`hme.streaming.OnlineEM`): the first call fits the batch by EM (with
        ``n_init``, ``n_candidates``, ``max_iter``, ``tol``), every later call takes one stepwise-EM step with
        step size ``(t + 1)^(-step_exponent)``. The ridges are fixed by the first batch."""
        from sklearn.utils.validation import validate_data

        from ._base import check_sample_weight

        first = not hasattr(self, "_online")
        if first:
            self._validate_params()
            self._check_streamable("partial_fit")
        X, y = validate_data(self, X, y, multi_output=True, y_numeric=True, dtype=[np.float64, np.float32],
                             reset=first)
        y = np.asarray(y, dtype=X.dtype)
        Y = y[:, None] if y.ndim == 1 else y
        sample_weight = check_sample_weight(sample_weight, X, dtype=X.dtype)
        with precision_scope(X.dtype):
            if first:
                self._y_1d, self.n_outputs_ = y.ndim == 1, Y.shape[1]
                spec = self._stream_spec(X.shape[1], Y.shape[1])
                streaming.check_streamable(spec)
                self._check_min_samples(X.shape[0], spec)
                w = sample_weight.astype(np.float64)
                Z = np.concatenate([X, Y], 1).astype(np.float64)
                dz = Z - w @ Z / w.sum()
                alpha, target, scale, gate_alpha = self._stream_ridges(spec, (dz * w[:, None]).T @ dz, w.sum())
                seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
                self._online = streaming.OnlineEM(
                    spec, step_exponent=self.step_exponent, alpha=alpha, gate_alpha=gate_alpha,
                    var_floor=self.var_floor, coef_target=target, coef_scale=scale, n_init=self.n_init,
                    n_candidates=self.n_candidates, random_state=seed, max_iter=self.max_iter, tol=self.tol)
                self._online_range = (X.min(0), X.max(0))
                self._online_ridges = (alpha, gate_alpha, target, scale)
            else:
                if Y.shape[1] != self.n_outputs_:
                    raise ValueError(f"y has {Y.shape[1]} outputs; the first batch had {self.n_outputs_}")
                lo, hi = self._online_range
                self._online_range = (np.minimum(lo, X.min(0)), np.maximum(hi, X.max(0)))
            self._online.update(X, Y, sample_weight)
            alpha, gate_alpha, target, scale = self._online_ridges
            lo, hi = self._online_range
            self._store_streamed(self._online.spec, self._online.params, lo, hi, self._online.x_ref,
                                 alpha, gate_alpha, target, scale, X.dtype)
        online = self._online
        self.n_batches_ = online.n_batches
        self.online_log_likelihoods_ = np.asarray(online.history)
        # an online fit has no training log-likelihood of its own: log_likelihood_ is NaN, lower_bounds_ are the
        # batches' prequential mean log-likelihoods (the first batch's EM objective first)
        self._store_diagnostics(online.n_batches, False, False, np.r_[online.first_objective, online.history],
                                float("nan"), online.leaf_mass, np.asarray(online.options.var_floor))
        return self
