"""Guided tour: the seed's argument in order, one screen per step, for a talk.

Each step is a claim in two sentences, the chart that shows it (from its lab, on that
lab's preset runs, run once and then reused from the store) and the measured readout.
Back / Next or the ← / → keys move; the step is in the URL (``/tour?step=ics``). Opening
the tour at its first step queues, in the background, every run it needs that is not
stored yet, so later steps are ready when the speaker reaches them.
"""
from normlab.ui import menu
from normlab.ui import tour as ui
from normlab.views.tour import STEPS

menu.page_setup(menu.TOUR)
ui.presenter()
i = ui.position(STEPS)
ui.launch_at_start(i, STEPS)
ui.nav(i, STEPS)
ui.screen(STEPS[i])
