"""One file per figure, each registering its drawing function with `@figure`; imported here in the
order `vtanalysis figures` draws them (a new figure: a new file and its line here)."""
from . import positional_bias, inflection, saliency_auc, t2i_similarity, coverage, overlays  # noqa: F401
from . import accuracy_vs_keep, causal_horizon, causal_knockout, causal_agreement, findings_table  # noqa: F401
