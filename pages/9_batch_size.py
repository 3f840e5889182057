"""Lab 6, batch size: validation error against the batch size with the learning rate
scaled linearly and the examples seen held fixed, in eval and in training mode."""
import streamlit as st

from normlab.ui import lab, menu
from normlab.ui.common import get_store
from normlab.ui.sweep import final_frame, sweep_view
from normlab.views.labs import sensitivity

menu.page_setup(menu.BATCH_SIZE)
lab.header(sensitivity.BATCH_LAB)


def view(runs) -> None:
    grid = get_store().comparison(cid).get("grid")
    fields = ["batch_size"] if "batch_size" in (grid or {}) else None
    shown = sweep_view(runs, cid, grid, fields=fields)
    if shown is None:
        return
    ev = final_frame(runs, "batch_size", "val", "acc", shown.how)
    trained = any(c.get("eval_train_mode") for c in runs["config"])
    tr = final_frame(runs, "batch_size", "val_train_mode", "acc", shown.how) if trained else None
    lab.readout(sensitivity.batch_readout(ev, tr))


cid = lab.presets(sensitivity.BATCH_LAB)
if cid:
    lab.live(sensitivity.BATCH_LAB, cid, view)
st.caption("Error = 1 − validation accuracy, mean over seeds. *Eval mode* is how a model is "
           "used after training (BatchNorm: running statistics); *training mode* normalizes "
           "each validation batch of the run's batch size with its own statistics.")
