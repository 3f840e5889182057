"""Views: what the dashboard shows, computed without Streamlit.

``frames`` reshapes stored metrics into tidy frames (seeds, smoothing, downsampling);
``palette`` gives every method one colour; ``charts`` and ``layercharts`` are the Altair
builders (tidy frame in, chart out), ``chartparts`` their shared pieces, ``viewparams`` and
``clientcurves`` the live charts' browser-side options; ``urlstate`` is the URL ↔ setup
codec; ``compareview`` (with ``runprogress``), ``layerview`` and ``runtable`` are the
page-independent logic of the Compare, Layer dynamics and Runs pages. Every function here works from a shell or a test.
Depends on :mod:`normlab.runs` and below.
"""
