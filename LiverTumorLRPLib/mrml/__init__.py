"""MRML side of the Slicer module and of the web page: volume nodes in, segmentation and relevance nodes out.

Works with the real Slicer core headless (``slicer-core`` from PyPI) as well as inside Slicer; never Qt,
never Python threads.  By concern:

* :mod:`.scene`: scene access, node arrays and geometry, :class:`~.scene.headless_scene`;
* :mod:`.inputs`: sequence assignment, the (6, z, y, x) stack, the phantom case, regions;
* :mod:`.nodes`: segmentation, relevance, table and chart nodes, colour tables, subject hierarchy;
* :mod:`.render`: offscreen slice views;
* :mod:`.tasks`: the blocking in-process path (scripts, tests);
* :mod:`.jobs`: :class:`~.jobs.WorkerJob`, the same work in a worker process (the GUI, the batch).

:mod:`LiverTumorLRPLib.slicer_logic` re-exports the public names of all of them.
"""
