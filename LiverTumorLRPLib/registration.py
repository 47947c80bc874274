"""Registration of every series to the reference series (T1 15 min), as in the paper's preprocessing.

``register_to_reference`` runs a rigid registration (Euler 3D, Mattes mutual
information, three-level pyramid, conjugate gradient with line search) and then an
optional coarse B-spline (LBFGSB, few iterations).  Series of one session share
the scanner's coordinate system, so the start is the identity with the rotation
centre at the reference's centre (a moments/geometry initialiser would be misled
by different fields of view).  Each stage is kept only if it improves the metric,
so a failed optimisation never makes the alignment worse than the scanner's.

Transforms follow ITK: they map points of the fixed (reference) image to the
moving image.  A 48x128x128 volume takes a few seconds on two cores.
"""
from __future__ import annotations

import math
import warnings
from typing import Optional

import numpy as np
import SimpleITK as sitk

HISTOGRAM_BINS = 32


def _itk_seed(seed: int) -> int:
    """ITK reads a sampling seed of 0 as "seed from the wall clock": shift ours so that every seed is fixed."""
    return int(seed) % 2_000_000_000 + 1


def _as_float(image: sitk.Image) -> sitk.Image:
    if image.GetDimension() != 3:
        raise ValueError(f"registration needs 3D images, got a {image.GetDimension()}D image")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError("registration needs scalar images, got a vector image")
    return sitk.Cast(image, sitk.sitkFloat32) if image.GetPixelID() != sitk.sitkFloat32 else image


def _centre(image: sitk.Image) -> tuple[float, float, float]:
    size = np.asarray(image.GetSize(), dtype=float)
    return image.TransformContinuousIndexToPhysicalPoint(tuple((size - 1.0) / 2.0))


def _method(seed: int, sampling: float = 0.25, strategy=None) -> sitk.ImageRegistrationMethod:
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=HISTOGRAM_BINS)
    reg.SetMetricSamplingStrategy(reg.RANDOM if strategy is None else strategy)
    reg.SetMetricSamplingPercentage(float(sampling), _itk_seed(seed))
    reg.SetInterpolator(sitk.sitkLinear)
    return reg


def _pyramid(reg: sitk.ImageRegistrationMethod, image: sitk.Image, wanted: tuple[int, ...], samples: int,
             seed: int) -> None:
    """Shrink factors, smoothing and a sampling percentage per level giving about ``samples`` metric samples."""
    smallest = min(image.GetSize())
    shrinks = [f for f in wanted if smallest // f >= 8] or [1]
    n = float(np.prod(image.GetSize()))
    percent = [float(min(1.0, max(1e-3, samples * f ** 3 / n))) for f in shrinks]
    reg.SetShrinkFactorsPerLevel(shrinks)
    reg.SetSmoothingSigmasPerLevel([f / 2.0 if f > 1 else 0.0 for f in shrinks])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    reg.SetMetricSamplingPercentagePerLevel(percent, _itk_seed(seed))


def _metric(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform, seed: int) -> float:
    """Mattes MI (lower is better) of ``moving`` under ``transform`` on a fixed regular grid of samples."""
    n = float(np.prod(fixed.GetSize()))
    reg = _method(seed, min(1.0, 40_000 / n), sitk.ImageRegistrationMethod.REGULAR)
    reg.SetInitialTransform(transform, inPlace=False)
    try:
        return float(reg.MetricEvaluate(fixed, moving))
    except RuntimeError:  # too few samples overlap: as bad as it gets
        return math.inf


def rigid_register(fixed: sitk.Image, moving: sitk.Image, seed: int = 0, samples: int = 15_000,
                   iterations: int = 40, max_step_mm: float = 2.0) -> sitk.Euler3DTransform:
    """Rigid (Euler 3D) transform mapping ``fixed`` points to ``moving`` points."""
    fixed, moving = _as_float(fixed), _as_float(moving)
    transform = sitk.Euler3DTransform()
    transform.SetCenter(_centre(fixed))
    reg = _method(seed)
    # conjugate gradient with a line search: plain/regular-step gradient descent stalls on MI between contrasts.
    # The learning rate is re-estimated every iteration so that a unit step moves no voxel more than
    # ``max_step_mm``; the line search looks up to 2 such steps ahead.
    reg.SetOptimizerAsConjugateGradientLineSearch(learningRate=1.0, numberOfIterations=iterations,
                                                  convergenceMinimumValue=1e-5, convergenceWindowSize=5,
                                                  lineSearchUpperLimit=2.0, lineSearchEpsilon=0.05,
                                                  lineSearchMaximumIterations=8,
                                                  estimateLearningRate=reg.EachIteration,
                                                  maximumStepSizeInPhysicalUnits=max_step_mm)
    reg.SetOptimizerScalesFromPhysicalShift()
    _pyramid(reg, fixed, (4, 2, 1), samples, seed)
    reg.SetInitialTransform(transform, inPlace=True)
    reg.Execute(fixed, moving)
    return transform


def bspline_register(fixed: sitk.Image, moving: sitk.Image, initial: sitk.Transform, seed: int = 0,
                     samples: int = 5_000, grid_spacing_mm: float = 60.0,
                     iterations: int = 10) -> sitk.BSplineTransform:
    """Coarse B-spline refining ``initial`` (applied after it): the composite is ``initial(bspline(x))``."""
    fixed, moving = _as_float(fixed), _as_float(moving)
    extent = [sz * sp for sz, sp in zip(fixed.GetSize(), fixed.GetSpacing())]
    mesh = [max(1, int(round(e / grid_spacing_mm))) for e in extent]
    bspline = sitk.BSplineTransformInitializer(fixed, mesh, 3)
    reg = _method(seed + 1)
    reg.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5, numberOfIterations=iterations,
                             maximumNumberOfCorrections=5, maximumNumberOfFunctionEvaluations=4 * iterations,
                             costFunctionConvergenceFactor=1e7)
    _pyramid(reg, fixed, (2, 1), samples, seed + 1)
    reg.SetMovingInitialTransform(initial)
    reg.SetInitialTransform(bspline, inPlace=True)
    reg.Execute(fixed, moving)
    return bspline


def register_to_reference(moving: sitk.Image, fixed: sitk.Image, bspline: bool = True, seed: int = 0, *,
                          samples: int = 15_000, grid_spacing_mm: float = 60.0,
                          default_value: Optional[float] = None) -> tuple[sitk.Image, sitk.Transform]:
    """Register ``moving`` to ``fixed``; returns (moving resampled on the fixed grid as float32, transform).

    Rigid, then (``bspline=True``) a B-spline with control points about ``grid_spacing_mm`` apart.
    The transform maps fixed points to moving points (an ``Euler3DTransform``, or a
    ``CompositeTransform`` rigid + B-spline).  ``seed`` makes the metric sampling reproducible;
    ``samples`` is about the number of metric samples per pyramid level (a third for the B-spline).
    Voxels mapped outside ``moving`` get ``default_value`` (default: the minimum of ``moving``).
    """
    fixed_f, moving_f = _as_float(fixed), _as_float(moving)
    identity = sitk.Euler3DTransform()
    identity.SetCenter(_centre(fixed_f))
    best: sitk.Transform = identity
    best_metric = _metric(fixed_f, moving_f, identity, seed)
    try:
        rigid = rigid_register(fixed_f, moving_f, seed=seed, samples=samples)
    except RuntimeError as e:  # e.g. too few samples in the overlap
        rigid = None
        rigid_error = str(e).strip().splitlines()[-1] if str(e).strip() else "unknown error"
        warnings.warn(f"rigid registration failed ({rigid_error}); the scanner alignment is kept", stacklevel=2)
    if rigid is not None:
        m = _metric(fixed_f, moving_f, rigid, seed)
        if m < best_metric:
            best, best_metric = rigid, m
    if bspline:
        start = sitk.Euler3DTransform(best)
        try:
            bs = bspline_register(fixed_f, moving_f, start, seed=seed, samples=max(1000, samples // 3),
                                  grid_spacing_mm=grid_spacing_mm)
        except RuntimeError:
            bs = None
        if bs is not None:
            composite = sitk.CompositeTransform([start, bs])
            m = _metric(fixed_f, moving_f, composite, seed)
            if m < best_metric:
                best, best_metric = composite, m
    if default_value is None:
        default_value = float(sitk.GetArrayViewFromImage(moving_f).min())
    resampled = sitk.Resample(moving_f, fixed_f, best, sitk.sitkLinear, float(default_value), sitk.sitkFloat32)
    return resampled, best


def transform_points(transform: sitk.Transform, points) -> np.ndarray:
    """Apply ``transform`` to an (N, 3) array of physical points (x, y, z in mm, LPS)."""
    pts = np.asarray(points, dtype=float).reshape(-1, 3)
    return np.array([transform.TransformPoint(tuple(map(float, p))) for p in pts])
