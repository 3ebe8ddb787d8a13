"""Conformance rows of the parameter-sharing compressors (jaxcomp.quant.sharing.trained)."""

from conformance_kit import SCHED, Row

import jaxcomp as jc
import jaxcomp.prune as jp
from jaxcomp.quant.sharing.trained import weight_sharing

ROWS = [
    Row("weight_sharing", lambda: weight_sharing({".*fc1.*": 3, ".*": 1}, init="density")),
    # pruning keeps changing its masks after the clusters formed: zeros leave their clusters
    Row("weight_sharing", lambda: jc.chain(jp.magnitude_pruning(SCHED), weight_sharing(2)),
        label="weight_sharing/after-pruning"),
]
