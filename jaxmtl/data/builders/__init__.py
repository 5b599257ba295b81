"""TFDS builders for the datasets jaxmtl builds itself, offline (see docs/data.md).

Importing this package registers the builders with TFDS under their snake-case names, so
`tfds.data_source('jaxmtl_digits', data_dir=...)` works once they are prepared.
"""
from jaxmtl.data.builders.bytes import BytesConfig, JaxmtlBytes
from jaxmtl.data.builders.digits import JaxmtlDigits
from jaxmtl.data.builders.mnist1d import JaxmtlMnist1d
from jaxmtl.data.builders.multidigits import JaxmtlMultidigits

EMBEDDED_BUILDERS = {
    "jaxmtl_digits": JaxmtlDigits,
    "jaxmtl_multidigits": JaxmtlMultidigits,
    "jaxmtl_mnist1d": JaxmtlMnist1d,
    "jaxmtl_bytes": JaxmtlBytes,
}
# The merging task suite (builders/suite.py, docs/merging.md): jaxmtl_suite_<task>, one per task.
from jaxmtl.data.builders import suite  # noqa: E402
EMBEDDED_BUILDERS.update(suite.BUILDERS)

__all__ = ["BytesConfig", "EMBEDDED_BUILDERS", "JaxmtlBytes", "JaxmtlDigits", "JaxmtlMnist1d",
           "JaxmtlMultidigits"]
