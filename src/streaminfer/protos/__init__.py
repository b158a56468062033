"""Protocol definitions written for this project (TF Serving, KServe V2, the seed's legacy API).

The ``*_pb2.py`` / ``*_pb2_grpc.py`` modules are generated from the ``.proto`` files here
by ``python -m streaminfer.protos.build`` (run by ``make install``), and into every wheel,
sdist and editable install by ``setup.py``; never edit them.
"""
