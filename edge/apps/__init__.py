"""medge.edge.apps: the commands of the edge, each an argparse front on the library (``add_parser``, ``run``).

- ``cli``: the ``medge`` dispatcher (and the commands of the other layers, found by entry point);
- ``check``, ``predict``, ``watch``, ``preview``, ``validate``, ``monitor``, ``batch``: one command each;
- ``serve`` and ``node``: one command each, a package of several modules;
- ``options`` and ``records``: what the commands share (model and input arguments, the record writer).

A command never imports another command: what two commands need is library code in ``medge.edge``.
"""
