"""Streamlit helpers shared by the pages in ``pages/`` (the only place Streamlit is used).

``import normlab`` never loads this package: the library, the CLI and the tests of
everything that computes run without Streamlit. ``menu`` draws the one navigation every
page shows; ``common`` holds the store, engine and URL helpers; ``form`` and ``live`` the
Compare page's form and live view; ``picker`` the run pickers and panels of Layer
dynamics and Runs.
"""
