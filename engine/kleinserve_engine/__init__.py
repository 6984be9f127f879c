"""kleinserve's inference engine: FLUX.2 [klein] 4B edit and text-to-image over a narrow binary protocol.

Kept import-light on purpose: `python -m kleinserve_engine serve` must bind its socket before torch loads.
"""

__version__ = "0.1.0"
PROTOCOL_VERSION = 1
