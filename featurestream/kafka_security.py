"""Kafka TLS/SASL options, parsed once and handed to every Kafka client as plain values.

``--kafka-security-protocol`` (PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL), ``--kafka-sasl-mechanism`` (PLAIN,
SCRAM-SHA-256, SCRAM-SHA-512), ``--kafka-ssl-cafile/--kafka-ssl-certfile/--kafka-ssl-keyfile``; the SASL user
name and password come from env ``FEATURESTREAM_KAFKA_SASL_USERNAME`` / ``_PASSWORD`` only (never the
command line). One ``KafkaSecurity`` becomes:

* ``client_config()``: kafka-python keyword arguments (sink, backfill, bootstrap, produce, verify, the
  worker's topic setup), e.g. ``{"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512", ...}``;
* ``faust_credentials()``: the worker's Faust ``broker_credentials`` (``faust.SASLCredentials`` or
  ``faust.SSLCredentials`` with an ``ssl.SSLContext``), or None for PLAINTEXT.

The options themselves are declared in ``featurestream.options``. ``stream/`` and ``sinks/`` never import
this module: the CLI passes them the results.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
USERNAME_ENV = "FEATURESTREAM_KAFKA_SASL_USERNAME"
PASSWORD_ENV = "FEATURESTREAM_KAFKA_SASL_PASSWORD"


@dataclass(frozen=True)
class KafkaSecurity:
    """How to reach Kafka securely; ``check()`` turns every mistake into a one-line ValueError."""

    protocol: str = "PLAINTEXT"
    sasl_mechanism: str = "PLAIN"
    sasl_username: str | None = None
    sasl_password: str | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None

    def __repr__(self) -> str:  # never print the password
        return f"KafkaSecurity(protocol={self.protocol!r}, sasl_mechanism={self.sasl_mechanism!r}, user={self.sasl_username!r})"

    @classmethod
    def from_args(cls, args: argparse.Namespace, environ=os.environ) -> KafkaSecurity:
        return cls(
            protocol=getattr(args, "kafka_security_protocol", None) or "PLAINTEXT",
            sasl_mechanism=getattr(args, "kafka_sasl_mechanism", None) or "PLAIN",
            sasl_username=environ.get(USERNAME_ENV) or None,
            sasl_password=environ.get(PASSWORD_ENV) or None,
            ssl_cafile=getattr(args, "kafka_ssl_cafile", None),
            ssl_certfile=getattr(args, "kafka_ssl_certfile", None),
            ssl_keyfile=getattr(args, "kafka_ssl_keyfile", None),
        ).check()

    @property
    def uses_ssl(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    @property
    def uses_sasl(self) -> bool:
        return self.protocol in ("SASL_PLAINTEXT", "SASL_SSL")

    def check(self) -> KafkaSecurity:
        if self.protocol not in PROTOCOLS:
            raise ValueError(
                f"--kafka-security-protocol {self.protocol!r} is not one of {', '.join(PROTOCOLS)}"
            )
        if self.sasl_mechanism not in MECHANISMS:
            raise ValueError(f"--kafka-sasl-mechanism {self.sasl_mechanism!r} is not one of {', '.join(MECHANISMS)}")
        if self.uses_sasl and not (self.sasl_username and self.sasl_password):
            raise ValueError(
                f"--kafka-security-protocol {self.protocol} needs a user name and password; hint: set "
                f"{USERNAME_ENV} and {PASSWORD_ENV}"
            )
        files = {"cafile": self.ssl_cafile, "certfile": self.ssl_certfile, "keyfile": self.ssl_keyfile}
        given = [k for k, v in files.items() if v]
        if given and not self.uses_ssl:
            raise ValueError(
                f"--kafka-ssl-{given[0]} needs --kafka-security-protocol SSL or SASL_SSL (got {self.protocol})"
            )
        if bool(self.ssl_certfile) != bool(self.ssl_keyfile):
            raise ValueError("--kafka-ssl-certfile and --kafka-ssl-keyfile go together (mutual TLS)")
        for kind in given:
            if not Path(files[kind]).is_file():
                raise ValueError(f"--kafka-ssl-{kind} {files[kind]!r}: no such file")
        return self

    def _common_config(self) -> dict:
        """The protocol and SASL arguments kafka-python and aiokafka share; {} for PLAINTEXT."""
        if self.protocol == "PLAINTEXT":
            return {}
        out: dict = {"security_protocol": self.protocol}
        if self.uses_sasl:
            out.update(
                sasl_mechanism=self.sasl_mechanism,
                sasl_plain_username=self.sasl_username,
                sasl_plain_password=self.sasl_password,
            )
        return out

    def client_config(self) -> dict:
        """kafka-python keyword arguments (KafkaConsumer, KafkaProducer, KafkaAdminClient); {} for PLAINTEXT."""
        out = self._common_config()
        if self.uses_ssl:
            out["ssl_check_hostname"] = True
            for kind in ("cafile", "certfile", "keyfile"):
                value = getattr(self, f"ssl_{kind}")
                if value:
                    out[f"ssl_{kind}"] = value
        return out

    def aiokafka_config(self) -> dict:
        """aiokafka keyword arguments (AIOKafkaConsumer, AIOKafkaProducer); {} for PLAINTEXT."""
        out = self._common_config()
        if self.uses_ssl:
            out["ssl_context"] = self.ssl_context()
        return out

    def ssl_context(self):
        """An ``ssl.SSLContext`` verifying the brokers (system CAs, or ``ssl_cafile``), with the client cert."""
        import ssl

        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ssl_cafile)
        if self.ssl_certfile:
            try:
                context.load_cert_chain(self.ssl_certfile, self.ssl_keyfile)
            except (ssl.SSLError, OSError) as exc:
                raise ValueError(f"cannot load --kafka-ssl-certfile/--kafka-ssl-keyfile: {exc}") from None
        return context

    def faust_credentials(self):
        """Faust ``broker_credentials``: None (PLAINTEXT), ``SSLCredentials`` or ``SASLCredentials``."""
        if self.protocol == "PLAINTEXT":
            return None
        import faust

        if self.protocol == "SSL":
            return faust.SSLCredentials(self.ssl_context())
        return faust.SASLCredentials(
            username=self.sasl_username,
            password=self.sasl_password,
            mechanism=self.sasl_mechanism,
            ssl_context=self.ssl_context() if self.uses_ssl else None,
        )
