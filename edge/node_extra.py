"""Whether the node extra works on this box (``medge check``): pynetdicom, highdicom and pydicom import,
and a Storage SCP on 127.0.0.1 answers a C-ECHO from this process.

The extra is optional: its packages are imported inside ``check_node_extra`` only, so this module
imports with the base install, and without the extra the answer names what to install.

Usage:
    from medge.edge.node_extra import check_node_extra
    print(check_node_extra())   # {"ok": True, "versions": {...}, "transfer_syntaxes": {...}, "error": None}
"""
from __future__ import annotations

from medge.edge.inputs.dicom import DECODERS, transfer_syntaxes

VERIFICATION = "1.2.840.10008.1.1"  # the Verification SOP Class: C-ECHO
AE_TITLE = "MEDGE-CHECK"
TIMEOUT_S = 5  # ACSE, DIMSE and network timeouts of the check's association


def check_node_extra() -> dict:
    """The node extra's versions, the transfer syntaxes decodable here, and a C-ECHO to itself.

    Returns:
        ``{"ok", "error"}`` and, once the extra imports, ``"versions"``; after a C-ECHO, ``"transfer_syntaxes"``
        (``decodable`` of ``known``). Never raises for a missing extra or a failed C-ECHO: they are its answer.
    """
    try:
        import highdicom
        import pydicom
        import pynetdicom
    except ImportError as e:
        return {"ok": False, "error": f"{e.name} is not installed (pip install 'medge[node]')"}
    versions = {"pynetdicom": pynetdicom.__version__, "highdicom": highdicom.__version__, "pydicom": pydicom.__version__}
    syntaxes = {"decodable": len(transfer_syntaxes()), "known": len(DECODERS)}
    from pynetdicom import AE

    ae = AE(ae_title=AE_TITLE)
    ae.add_supported_context(VERIFICATION)
    ae.add_requested_context(VERIFICATION)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT_S
    try:
        server = ae.start_server(("127.0.0.1", 0), block=False)
    except OSError as e:
        return {"ok": False, "versions": versions, "error": f"cannot listen on 127.0.0.1: {e.strerror or e}"}
    try:
        assoc = ae.associate("127.0.0.1", server.server_address[1], ae_title=AE_TITLE)
        status = assoc.send_c_echo() if assoc.is_established else None
        if assoc.is_established:
            assoc.release()
    finally:
        server.shutdown()
    ok = status is not None and int(getattr(status, "Status", -1)) == 0x0000  # Success
    return {"ok": ok, "versions": versions, "transfer_syntaxes": syntaxes,
            "error": None if ok else "a C-ECHO to a Storage SCP on 127.0.0.1 failed"}
