"""A PACS through DICOMweb: a study in by its Study Instance UID (WADO-RS), results back (STOW-RS).

Credentials never go on the command line: ``LIVER_LRP_PACS_USER`` and ``LIVER_LRP_PACS_PASSWORD`` from the
environment, else a netrc file (requests' default).  Every failure is one line naming the server.
"""
from __future__ import annotations

import os
from typing import Callable, Optional

USER_VARIABLE, PASSWORD_VARIABLE = "LIVER_LRP_PACS_USER", "LIVER_LRP_PACS_PASSWORD"


def credentials() -> tuple:
    """(user, password) from the environment, or (None, None): the netrc file then applies."""
    return os.environ.get(USER_VARIABLE), os.environ.get(PASSWORD_VARIABLE)


def client(url: str, user: Optional[str] = None, password: Optional[str] = None, attempts: int = 3):
    """A DICOMweb client for ``url`` (the DICOMweb root, e.g. ``http://host:8042/dicom-web``): basic
    authentication with ``user``/``password`` (default: :func:`credentials`), else a netrc file."""
    from dicomweb_client.api import DICOMwebClient
    from dicomweb_client.session_utils import create_session, create_session_from_user_pass

    if user is None:
        user, password = credentials()
    session = create_session_from_user_pass(user, password or "") if user is not None else create_session()
    c = DICOMwebClient(url=url.rstrip("/"), session=session)
    c.set_http_retry_params(retry=attempts > 1, max_attempts=max(int(attempts), 1))
    return c


def _call(url: str, what: str, fn: Callable, not_found: Optional[str] = None):
    """``fn()``, with the server's refusals and unreachability as one ValueError line (``not_found``: the words
    for HTTP 404)."""
    import requests

    try:
        return fn()
    except requests.exceptions.HTTPError as e:
        status = e.response.status_code if e.response is not None else "?"
        answer = "refused the login" if status in (401, 403) else f"answered HTTP {status}"
        if status == 404 and not_found:
            raise ValueError(f"PACS {url}: {not_found}") from None
        raise ValueError(f"PACS {url}: {answer} ({what})") from None
    except requests.exceptions.RequestException as e:
        raise ValueError(f"PACS {url}: cannot be reached ({type(e).__name__}; {what})") from None


def retrieve_study(url: str, study_uid: str, folder: str, user: Optional[str] = None,
                   password: Optional[str] = None, attempts: int = 3) -> list:
    """Every instance of study ``study_uid`` from the PACS into ``folder`` (one file per instance, written
    atomically); ValueError when the server refuses, cannot be reached or has no such study."""
    from .mr import save_dataset

    c = client(url, user, password, attempts)
    datasets = _call(url, f"WADO-RS of study {study_uid}", lambda: c.retrieve_study(study_uid),
                     not_found=f"no study {study_uid}")
    if not datasets:
        raise ValueError(f"PACS {url}: no study {study_uid}")
    return [save_dataset(ds, os.path.join(folder, str(ds.SeriesInstanceUID), f"{ds.SOPInstanceUID}.dcm"))
            for ds in datasets]


def store(paths: list, url: str, user: Optional[str] = None, password: Optional[str] = None,
          attempts: int = 3) -> list:
    """Send DICOM files to a PACS with STOW-RS, all in one request; returns the stored SOP Instance UIDs.
    ValueError (one line naming the server) when it cannot be reached, refuses the login or rejects an
    instance."""
    import pydicom

    c = client(url, user, password, attempts)
    datasets = [pydicom.dcmread(p) for p in paths]
    response = _call(url, f"STOW-RS of {len(datasets)} instance(s)", lambda: c.store_instances(datasets))
    failed = list(response.get("FailedSOPSequence") or []) if response is not None else []
    if failed:
        raise ValueError(f"PACS {url}: {len(failed)} of {len(datasets)} instance(s) rejected")
    return [str(ds.SOPInstanceUID) for ds in datasets]
