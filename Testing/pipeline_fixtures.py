"""Small phantom cases and a tiny model that predicts some tumor on them, for the command-line tests."""
from __future__ import annotations

import os

import numpy as np
import torch

from LiverTumorLRPLib.case_io import read_case
from LiverTumorLRPLib.phantom import generate_case, write_case
from LiverTumorLRPLib.models import save_model
from LiverTumorLRPLib.unet import UNet3D, UNetConfig

SHAPE = (16, 48, 48)
SPACING = (8.0, 8.0, 8.0)


def make_cases(root, n=3, seed=100):
    folders = []
    for i in range(n):
        folder = os.path.join(root, f"case_{i:03d}")
        write_case(generate_case(seed + i, shape=SHAPE, spacing=SPACING), folder)
        folders.append(folder)
    return folders


def make_model(path, case_folder, fraction=0.05):
    """A random u-net whose tumor bias is shifted so that ``fraction`` of a case is predicted tumor."""
    torch.manual_seed(0)
    model = UNet3D(UNetConfig(depth=2, base_channels=4)).eval()
    image = torch.from_numpy(read_case(case_folder).image)[None]
    with torch.no_grad():
        y = model(image)[0]
        margin = (y[1] - y[0]).flatten()
        model.head.bias[1] -= float(torch.quantile(margin, 1 - fraction))
    return str(save_model(model, path))


def geometry(path):
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return (reader.GetSize(), tuple(np.round(reader.GetOrigin(), 4).tolist()),
            tuple(np.round(reader.GetSpacing(), 4).tolist()), tuple(np.round(reader.GetDirection(), 6).tolist()))
