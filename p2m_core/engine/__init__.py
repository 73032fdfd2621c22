"""Training machinery that runs without Ray: one step (:mod:`~p2m_core.engine.step`); the
distributed loop wraps it."""
