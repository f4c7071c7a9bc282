"""The Flower engine: the same secure-sum parties as the local engine, carried by Flower 1.40.

* :mod:`.server`: :class:`~.server.DeployedRun`, the aggregator side (fused stages, dropouts,
  views, the run record), over any :class:`~.server.Transport`;
* :mod:`.site`: the site side (kit, data, approval, per-run party state), over any transport;
* :mod:`.apps`: the Flower ServerApp and ClientApp that carry them (Message API);
* :mod:`.inprocess`: a transport without Flower, for tests and dry runs.
"""
