"""The paper's baselines, one module each, every one a :class:`ntrk_bench.method.Method` moving through the
shared reverse-kernel step. Configurations name them by class (``conf/method/<name>.yaml``, ``_target_``);
nothing in ``ntrk_bench`` imports this package.
"""
