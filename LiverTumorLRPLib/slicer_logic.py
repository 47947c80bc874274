"""MRML side of the Slicer module: the public names of :mod:`LiverTumorLRPLib.mrml`, in one namespace.

Inputs are read from volume nodes (:func:`stack_inputs`), results written as segmentation and relevance
nodes (:func:`write_segmentation`, :func:`write_relevance`).  Work runs either blocking in this process
(:func:`segment`, :func:`explain_region`, :func:`analyze_sequences`; scripts and tests) or in a worker
process (:class:`WorkerJob`, :func:`segment_job`, :func:`explain_region_job`, :func:`analyze_sequences_job`;
the Slicer module and the batch), whose results are applied to the scene on the caller's thread.
"""
from __future__ import annotations

from .mrml.inputs import (PHANTOM_NAMES, REGION_KINDS, Inputs, Region, add_phantom_case, assign_sequences,  # noqa: F401
                          phantom_ijk_to_ras, point_mask, resolve_inputs, scalar_volume_nodes, segment_mask,
                          stack_inputs)
from .mrml.jobs import WorkerJob, analyze_sequences_job, explain_region_job, segment_job  # noqa: F401
from .mrml.nodes import (COLOR_TABLE_NAME, LABEL_COLOR_TABLE_NAME, SEGMENT_NAME, SERIES_COLORS,  # noqa: F401
                         TUMOR_COLOR, ExplanationResult, SegmentResult, label_color_table, relevance_color_table,
                         summary, write_relevance, write_segmentation)
from .mrml.render import SliceView, png_bytes, render_slice_view  # noqa: F401
from .mrml.scene import (MODULE_LOGICS, headless_scene, ijk_to_ras, node_array, resample_to,  # noqa: F401
                         same_grid, sitk_image)
from .mrml.tasks import (Job, Task, analyze_sequences, analyze_sequences_task, explain_region,  # noqa: F401
                         explain_region_task, get_model, segment, segment_task)

__all__ = ["headless_scene", "add_phantom_case", "phantom_ijk_to_ras", "Inputs", "Region", "Task", "Job",
           "SegmentResult", "ExplanationResult", "REGION_KINDS", "assign_sequences", "resolve_inputs",
           "stack_inputs", "segment_mask", "point_mask", "segment", "segment_task", "explain_region",
           "explain_region_task", "analyze_sequences", "analyze_sequences_task", "write_segmentation",
           "write_relevance", "relevance_color_table", "render_slice_view", "SliceView", "png_bytes",
           "label_color_table", "ijk_to_ras", "get_model", "summary", "WorkerJob", "segment_job",
           "explain_region_job", "analyze_sequences_job"]
