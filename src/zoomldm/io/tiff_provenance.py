"""Provenance of the pyramidal TIFFs (:mod:`.tiff`): written as an XMP packet, read back from it, from the
OME ``MapAnnotation`` or from the previous layouts (:func:`read_provenance`).

Provenance (settings, seed, version, mpp) is stored as JSON inside an XMP packet (TIFF tag 700, the
standard place for application metadata; the JSON is the text of ``zoomldm:provenance``) in both layouts,
and for OME-TIFF also as an OME ``MapAnnotation`` (namespace :data:`PROVENANCE_NAMESPACE`, one entry per
key) that OME tools show. No reader takes either for its own metadata. (A private tag was rejected:
unregistered numbers collide with vendor tags, e.g. 65420 marks a Hamamatsu NDPI file for OpenSlide and
tifffile.) :func:`read_provenance` reads it back, also from files of the previous layout (JSON in the
ImageDescription, or in the OME Image ``Description``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from ..errors import InputError

#: XML namespace of the provenance in the XMP packet, and Namespace of the OME MapAnnotation
PROVENANCE_NAMESPACE = "urn:zoomldm:provenance:1"

XMP_TAG = 700  # XMLPacket (Adobe XMP specification part 3: TIFF tag 700, type BYTE)
_RDF = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"


def _xmp_packet(record: Mapping[str, Any]) -> bytes:
    """An XMP packet whose ``zoomldm:provenance`` property holds ``record`` as JSON (XML-escaped)."""
    from xml.etree import ElementTree as ET

    ET.register_namespace("x", "adobe:ns:meta/")
    ET.register_namespace("rdf", _RDF)
    ET.register_namespace("zoomldm", PROVENANCE_NAMESPACE)
    meta = ET.Element("{adobe:ns:meta/}xmpmeta")
    rdf = ET.SubElement(meta, f"{{{_RDF}}}RDF")
    description = ET.SubElement(rdf, f"{{{_RDF}}}Description", {f"{{{_RDF}}}about": ""})
    prop = ET.SubElement(description, f"{{{PROVENANCE_NAMESPACE}}}provenance")
    prop.text = json.dumps(record, sort_keys=True, default=str)
    body = ET.tostring(meta, encoding="unicode")
    return f'<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>{body}<?xpacket end="r"?>'.encode()


def _xmp_record(packet: bytes | str) -> dict[str, Any] | None:
    """The provenance record in an XMP packet written by :func:`_xmp_packet`, or None if there is none."""
    from xml.etree import ElementTree as ET

    text = packet.decode("utf-8", "replace") if isinstance(packet, bytes) else packet
    try:
        node = ET.fromstring(text.strip("\x00 \n\r\t\ufeff")).find(f".//{{{PROVENANCE_NAMESPACE}}}provenance")
        record = json.loads(node.text) if node is not None and node.text else None
    except (ET.ParseError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def read_provenance(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The provenance record of a TIFF written by :class:`PyramidalTiffWriter`, or None if it has none.

    Reads the XMP packet of the first IFD; then, for OME-TIFF, the ``MapAnnotation`` of namespace
    :data:`PROVENANCE_NAMESPACE`; then the previous layout (JSON in the first ImageDescription, or in the
    OME Image ``Description``). A missing file or one that is not a TIFF is an :class:`InputError`.
    """
    import tifffile

    from ..tensorfiles import check_input_file

    path = check_input_file(path, "TIFF", InputError)
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            xmp = page.tags.valueof(XMP_TAG)
            description = page.description
            ome = tif.ome_metadata if tif.is_ome else None
    except (tifffile.TiffFileError, OSError, ValueError, IndexError) as err:
        reason = "it holds no image" if isinstance(err, IndexError) else str(err).splitlines()[0]
        raise InputError(f"{path}: not a readable TIFF ({reason}); pass a .tif written by zoomldm") from err
    if xmp:
        record = _xmp_record(xmp)
        if record is not None:
            return record
    if ome:
        return _ome_record(ome)
    try:  # previous layout of the generic TIFF: the record as JSON in ImageDescription
        record = json.loads(description) if description.lstrip().startswith("{") else None
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _ome_record(omexml: str) -> dict[str, Any] | None:
    """Provenance from OME-XML: our MapAnnotation, else (previous layout) JSON in the Image Description."""
    from xml.etree import ElementTree as ET

    try:
        root = ET.fromstring(omexml)
    except ET.ParseError:
        return None
    for annotation in root.iter():
        if annotation.tag.endswith("}MapAnnotation") and annotation.get("Namespace") == PROVENANCE_NAMESPACE:
            record: dict[str, Any] = {}
            for entry in annotation.iter():
                if entry.tag.endswith("}M") and entry.get("K") is not None:
                    text = entry.text or ""
                    try:  # every value is written as JSON; text from other tools is kept as a string
                        record[entry.get("K", "")] = json.loads(text)
                    except ValueError:
                        record[entry.get("K", "")] = text
            return record
    for node in root.iter():
        if node.tag.endswith("}Description") and node.text and node.text.lstrip().startswith("{"):
            try:
                record = json.loads(node.text)
            except ValueError:
                continue
            return record if isinstance(record, dict) else None
    return None
