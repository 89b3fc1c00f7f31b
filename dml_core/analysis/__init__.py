"""Page analyses: the maths behind the understanding pages, with no plotting and no UI.

``loss_curves`` (Loss explorer), ``batch_view`` (Miner view), ``sphere`` (Sphere & sampling),
``retrieval`` and ``verification`` (Retrieval), ``compare`` (Compare runs).
"""
