"""BayesianHMERegressor / BayesianHMEClassifier: posterior inference (numpyro NUTS or SVI) on the core's model.

Fitting: an EM fit (the point estimate, with restarts) gives the starting point of every chain (or the initial
location of the SVI guide), so the sampler explores the mode EM found instead of hopping between the relabelled
copies of it. Label switching: every posterior draw is put in the canonical leaf order of
:func:`hme.inference.canonicalize` (siblings sorted by their experts' mean prediction at the mean input) before
parameters are summarised; predictive quantities need no relabelling.
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

from hme import bayes
from hme.families import ExpertFamily, expert_family, expert_names
from hme.inference import canonicalize, free_parameter_draws
from hme.params import center_params

from .classifier import HMEClassifier
from .regressor import HMERegressor


def _stack(trees):
    return jax.tree_util.tree_map(lambda *a: np.stack(a), *trees)


class _BayesBase(BaseEstimator):
    _parameter_constraints: dict = {
        "depth": [Interval(numbers.Integral, 1, None, closed="left")],
        "branching": [Interval(numbers.Integral, 2, None, closed="left"), tuple, list],
        "gate": [str, tuple, list],  # a registered gate family, or one per level (hme.families validates the names)
        "method": [StrOptions({"nuts", "svi"})],
        "num_warmup": [Interval(numbers.Integral, 1, None, closed="left")],
        "num_samples": [Interval(numbers.Integral, 1, None, closed="left")],
        "num_chains": [Interval(numbers.Integral, 1, None, closed="left")],
        "svi_steps": [Interval(numbers.Integral, 1, None, closed="left")],
        "learning_rate": [Interval(numbers.Real, 0, None, closed="neither")],
        "priors": [None, dict],
        "n_init": [Interval(numbers.Integral, 1, None, closed="left")],
        "random_state": [None, Interval(numbers.Integral, 0, None, closed="left")],
        "verbose": ["verbose"],
    }

    def __init__(self, depth=1, branching=2, gate="softmax", method="nuts", num_warmup=500, num_samples=500,
                 num_chains=2, svi_steps=3000, learning_rate=0.01, priors=None, n_init=5, random_state=None,
                 verbose=0):
        self.depth = depth
        self.branching = branching
        self.gate = gate
        self.method = method
        self.num_warmup = num_warmup
        self.num_samples = num_samples
        self.num_chains = num_chains
        self.svi_steps = svi_steps
        self.learning_rate = learning_rate
        self.priors = priors
        self.n_init = n_init
        self.random_state = random_state
        self.verbose = verbose

    def _fit_posterior(self, X, y_core, point):
        spec = point._spec
        X = np.asarray(X, np.float64)
        self._spec = spec
        self._x_mean = X.mean(axis=0)
        Xc = X - self._x_mean
        self._scale = bayes.data_scale(spec, Xc, y_core)
        self._priors = bayes.Priors(**(self.priors or {}))
        seed = 0 if self.random_state is None else int(self.random_state)
        with jax.enable_x64(True):
            # the posterior is sampled in float64 whatever the input dtype (a float32 start breaks NUTS' tree building)
            start = center_params(
                spec,
                jax.tree_util.tree_map(lambda a: None if a is None else jnp.asarray(a, jnp.float64), point.params_),
                jnp.asarray(self._x_mean),
                +1.0,
            )
            Xj, yj = jnp.asarray(Xc), jnp.asarray(y_core)
            if self.method == "nuts":
                samples, div = bayes.run_nuts(spec, Xj, yj, self._scale, self._priors, start, self.num_warmup,
                                              self.num_samples, self.num_chains, seed,
                                              verbose=self.verbose)
                self.divergences_ = int(div.sum())
                self.elbo_ = None
            else:
                samples, losses = bayes.run_svi(spec, Xj, yj, self._scale, self._priors, start, self.svi_steps,
                                                self.learning_rate, self.num_samples, seed,
                                                verbose=self.verbose)
                self.divergences_ = 0
                self.elbo_ = -losses
        self.samples_ = samples  # raw site draws, (chains, draws, ...), on the centred inputs
        self._relabel()
        return self

    def _relabel(self):
        """Canonical leaf order per draw; keeps ``posterior_params_`` (on the raw inputs) and diagnostics."""
        spec = self._spec
        C, S = next(iter(self.samples_.values())).shape[:2]
        zero = np.zeros(spec.n_features)
        canon_sites, params = [], []
        with jax.enable_x64(True):
            for c in range(C):
                row = []
                for s in range(S):
                    p = bayes.params_from_sample(spec, {k: v[c, s] for k, v in self.samples_.items()})
                    p = canonicalize(spec, p, zero)
                    row.append({k: np.asarray(v) for k, v in bayes.sites_from_params(spec, p).items()})
                    params.append(jax.tree_util.tree_map(
                        np.asarray, center_params(spec, p, jnp.asarray(self._x_mean), -1.0)))
                canon_sites.append(_stack(row))
        self.relabelled_samples_ = _stack(canon_sites)
        self.posterior_params_ = _stack(params)
        from numpyro.diagnostics import summary

        # constant entries of a site (a correlation Cholesky factor's diagonal corner and upper triangle) have no
        # variance: their n_eff and r_hat are NaN, which the nan-aware max/min below skip
        with np.errstate(invalid="ignore", divide="ignore"):
            self.diagnostics_ = summary(self.relabelled_samples_, group_by_chain=True)
        if C > 1:
            self.rhat_ = float(max(np.nanmax(d["r_hat"]) for d in self.diagnostics_.values()))
        else:
            self.rhat_ = float("nan")
        self.ess_ = float(min(np.nanmin(d["n_eff"]) for d in self.diagnostics_.values()))

    # -- predictive -------------------------------------------------------------------------------------
    def _check_X(self, X):
        check_is_fitted(self, "samples_")
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        return np.asarray(X, np.float64) - self._x_mean

    def _draw_means(self, Xc):
        """(draws, n, k): every posterior draw's mixture mean (class probabilities for categorical experts)."""
        spec = self._spec
        flat = {k: v.reshape((-1,) + v.shape[2:]) for k, v in self.samples_.items()}
        with jax.enable_x64(True):
            return np.asarray(bayes.posterior_means(spec, flat, jnp.asarray(Xc)))

    def predictive_samples(self, X, random_state=None):
        """Posterior-predictive draws of y at X, (n_draws, n_samples) (numpyro ``Predictive`` on the mixture)."""
        from functools import partial

        from numpyro.infer import Predictive

        Xc = self._check_X(X)
        flat = {k: v.reshape((-1,) + v.shape[2:]) for k, v in self.samples_.items()}
        seed = 0 if random_state is None else int(random_state)
        with jax.enable_x64(True):
            pred = Predictive(partial(bayes.hme_model, self._spec), posterior_samples=flat, return_sites=["y"])
            out = pred(jax.random.PRNGKey(seed), jnp.asarray(Xc), None, self._scale, self._priors)["y"]
        return np.asarray(out)

    def to_arviz(self):
        """The relabelled posterior (and divergences) as ArviZ ``InferenceData`` (needs arviz)."""
        import warnings

        try:
            with warnings.catch_warnings():  # ArviZ 0.2x announces its refactor with a FutureWarning on import
                warnings.simplefilter("ignore", FutureWarning)
                import arviz as az
        except ImportError as err:
            raise ImportError('to_arviz needs ArviZ: pip install -e ".[bayes]" (or pip install arviz)') from err
        check_is_fitted(self, "samples_")
        return az.from_dict(posterior=self.relabelled_samples_)

    def summary(self, ci_level=0.9):
        """Posterior table of every free parameter, named and ordered as in the point estimate's ``summary()``
        (canonical leaf order, raw input scale): ``mean, sd``, equal-tailed ``ci_lower, ci_upper`` at
        ``ci_level``, bulk effective sample size ``n_eff`` and split ``r_hat`` (NaN with one chain). A
        ``pandas.DataFrame`` (a :class:`hme.table.ParameterTable` without pandas); ``attrs`` holds the method,
        the number of chains and draws and the divergences."""
        from numpyro.diagnostics import effective_sample_size, split_gelman_rubin

        from hme.table import make_table

        check_is_fitted(self, "samples_")
        if not 0 < ci_level < 1:
            raise ValueError(f"ci_level must lie in (0, 1), got {ci_level!r}")
        C, S = next(iter(self.samples_.values())).shape[:2]
        theta, names = free_parameter_draws(self._spec, self.posterior_params_,
                                            getattr(self, "feature_names_in_", None))
        th = np.asarray(theta, np.float64).reshape(C, S, -1)
        flat = th.reshape(C * S, -1)
        q = np.quantile(flat, [0.5 - ci_level / 2, 0.5 + ci_level / 2], axis=0)
        cols = {
            "mean": flat.mean(0),
            "sd": flat.std(0, ddof=1) if C * S > 1 else np.full(flat.shape[1], np.nan),
            "ci_lower": q[0],
            "ci_upper": q[1],
            "n_eff": np.asarray(effective_sample_size(th)) if S > 1 else np.full(flat.shape[1], np.nan),
            "r_hat": np.asarray(split_gelman_rubin(th)) if C > 1 and S > 3 else np.full(flat.shape[1], np.nan),
        }
        attrs = {"estimator": type(self).__name__, "method": self.method, "n_chains": C, "n_draws": S,
                 "divergences": getattr(self, "divergences_", None), "ci_level": ci_level}
        return make_table(cols, names, attrs)


class BayesianHMERegressor(RegressorMixin, _BayesBase):
    """Bayesian hierarchical mixture of linear or GLM experts, by NUTS or SVI (numpyro).

    Parameters
    ----------
    depth, branching, gate : the tree, as in :class:`HMERegressor`. ``gate="gaussian"`` (one gate) samples the
        joint model of (x, y): child weights logistic-normal, means N(0, sd(x_j)²) on the centred inputs, per-child
        scales HalfNormal(sd(x_j)) and an LKJ(2) correlation.
    expert : {"gaussian", "student_t", "poisson"}, default="gaussian"
        The expert family, as in :class:`HMERegressor`. Priors: Gaussian and t scales HalfNormal(sd(y_j)) per
        output, with an LKJ(2) correlation per expert for several outputs (``y`` of shape (n, m): Gaussian and t
        experts); t degrees of freedom Gamma(2, 0.1) (unless ``expert_df`` fixes them); Poisson intercepts
        centred on log(mean y).
    expert_df : float or None, default=None
        Student-t experts: fixed degrees of freedom (None: sampled)
    method : {"nuts", "svi"}, default="nuts"
    num_warmup, num_samples, num_chains : NUTS settings (SVI: ``num_samples`` draws from the fitted guide)
    svi_steps, learning_rate : SVI with a low-rank multivariate normal guide, Adam
    priors : dict of :class:`hme.bayes.Priors` fields (gate_scale, key_scale, coef_scale, noise_scale)
    n_init : EM restarts of the point estimate that starts the sampler
    random_state : int seed of the EM start and the sampler
    verbose : > 0 shows progress of the EM start and of the sampler/optimiser from the start (otherwise progress
        appears once a run has taken a few seconds). Ctrl-C stops a run within one chunk of steps
        (:data:`hme.bayes.NUTS_CHUNK`, :data:`hme.bayes.SVI_CHUNK`) and raises ``KeyboardInterrupt``.

    Attributes
    ----------
    samples_ : raw draws per site, (chains, draws, ...); relabelled_samples_ : the same in canonical leaf order
    posterior_params_ : HMEParams with a leading draw axis (relabelled, on the raw inputs)
    rhat_, ess_ : the worst R-hat and the smallest effective sample size over all parameters; divergences_
    diagnostics_ : per-site numpyro summary; elbo_ : ELBO per SVI step (None for NUTS)
    """

    _parameter_constraints = {
        **_BayesBase._parameter_constraints,
        "expert": [str],
        "expert_df": [None, Interval(numbers.Real, 0, None, closed="neither")],
    }

    def __init__(self, depth=1, branching=2, gate="softmax", expert="gaussian", expert_df=None, method="nuts",
                 num_warmup=500, num_samples=500, num_chains=2, svi_steps=3000, learning_rate=0.01, priors=None,
                 n_init=5, random_state=None, verbose=0):
        super().__init__(depth=depth, branching=branching, gate=gate, method=method, num_warmup=num_warmup,
                         num_samples=num_samples, num_chains=num_chains, svi_steps=svi_steps,
                         learning_rate=learning_rate, priors=priors, n_init=n_init, random_state=random_state,
                         verbose=verbose)
        self.expert = expert
        self.expert_df = expert_df

    def fit(self, X, y):
        self._validate_params()
        fam = expert_family(self.expert) if self.expert in expert_names("regression") else None
        if fam is None or type(fam).bayes_likelihood is ExpertFamily.bayes_likelihood:
            have = [n for n in expert_names("regression")
                    if type(expert_family(n)).bayes_likelihood is not ExpertFamily.bayes_likelihood]
            raise ValueError(f"BayesianHMERegressor's expert must be one of {have}, got {self.expert!r}")
        point = HMERegressor(depth=self.depth, branching=self.branching, gate=self.gate, expert=self.expert,
                             expert_df=self.expert_df, n_init=self.n_init, random_state=self.random_state,
                             max_iter=500, verbose=self.verbose)
        point.fit(X, y)
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32], y_numeric=True, multi_output=True)
        y = np.asarray(y, np.float64)
        self._y_1d = y.ndim == 1
        self.point_estimate_ = point
        y_core = y if y.ndim == 1 or y.shape[1] > 1 else y[:, 0]  # one output: a univariate likelihood
        return self._fit_posterior(X, y_core, point)

    def predict(self, X):
        """Posterior-predictive mean: the average over draws of each draw's mixture mean; (n_samples,) for one
        output, (n_samples, n_outputs) otherwise."""
        mean = self._draw_means(self._check_X(X)).mean(axis=0)
        return mean[:, 0] if self._y_1d else mean

    def predict_quantiles(self, X, q, random_state=None):
        """Posterior-predictive quantiles from predictive draws: (n_samples, len(q)) for one output,
        (n_samples, n_outputs, len(q)) otherwise."""
        draws = self.predictive_samples(X, random_state)  # (draws, n) or (draws, n, m)
        return np.moveaxis(np.quantile(draws, np.atleast_1d(q), axis=0), 0, -1)

    def predict_interval(self, X, coverage=0.9, random_state=None):
        """Central posterior-predictive interval ``(lower, upper)``."""
        if not 0 < coverage < 1:
            raise ValueError(f"coverage must be in (0, 1), got {coverage!r}")
        qs = self.predict_quantiles(X, [(1 - coverage) / 2, (1 + coverage) / 2], random_state)
        return qs[..., 0], qs[..., 1]


class BayesianHMEClassifier(ClassifierMixin, _BayesBase):
    """Bayesian hierarchical mixture of logistic / multinomial-logit experts, by NUTS or SVI (numpyro).

    Parameters and attributes as :class:`BayesianHMERegressor`, plus ``classes_``."""

    def fit(self, X, y):
        self._validate_params()
        point = HMEClassifier(depth=self.depth, branching=self.branching, gate=self.gate, n_init=self.n_init,
                              random_state=self.random_state, max_iter=500, alpha=1e-2,
                              verbose=self.verbose)
        point.fit(X, y)
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32])
        self.classes_, codes = np.unique(y, return_inverse=True)
        self.point_estimate_ = point
        return self._fit_posterior(X, codes.astype(np.int32), point)

    def predict_proba(self, X):
        """Posterior-predictive class probabilities (float64): the average over draws, renormalised."""
        p = np.clip(np.asarray(self._draw_means(self._check_X(X)), np.float64).mean(axis=0), 0.0, 1.0)
        return p / p.sum(axis=1, keepdims=True)

    def predict(self, X):
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]
