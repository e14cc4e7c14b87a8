"""`tunegate serve` settings: params.yaml's `serve` section, under TUNEGATE_* environment variables, under flags."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_settings import BaseSettings, InitSettingsSource, SettingsConfigDict

from tasks.core.config import ConfigError, ServeConfig, read_params

ENV_PREFIX = "TUNEGATE_"
API_KEYS_ENV = "TUNEGATE_API_KEYS"  # comma-separated keys; beside (not instead of) serve.api_keys_file
REGISTRY_PREFIX = "registry:"  # serve.model = registry:STAGE follows the registry's version in STAGE


class ServeSettings(ServeConfig, BaseSettings):
    """The serve section's fields; each read from (highest first) a flag, TUNEGATE_<FIELD>, params.yaml."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="forbid", strict=True)

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings):
        # Flags (init kwargs), then TUNEGATE_* variables; load_serve_settings adds params.yaml below them.
        return init_settings, env_settings

    @property
    def registry_stage(self) -> str | None:
        """The stage followed when serve.model is registry:STAGE, else None (a folder)."""
        return self.model.removeprefix(REGISTRY_PREFIX) if self.model.startswith(REGISTRY_PREFIX) else None


def _with_params(section: dict[str, Any]) -> type[ServeSettings]:
    """ServeSettings whose lowest-priority source is `section` (params.yaml's serve section)."""

    class FromParams(ServeSettings):
        @classmethod
        def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                       file_secret_settings):
            return init_settings, env_settings, InitSettingsSource(settings_cls, init_kwargs=section)

    return FromParams


def load_serve_settings(params: Path | None, flags: dict[str, Any]) -> ServeSettings:
    """Settings from params.yaml's serve section (None: environment and flags must give every field), then
    TUNEGATE_* variables, then `flags` (None values are flags not given)."""
    section = read_params(params).get("serve") if params is not None else {}
    if not isinstance(section, dict):
        raise ConfigError(f"{params} has no `serve` section (see the project's params.yaml for one)")
    given = {k: v for k, v in flags.items() if v is not None}
    try:
        return _with_params(dict(section))(**given)
    except ValidationError as exc:
        # A rule across fields has no location: its message names its keys itself.
        problems = "; ".join(f"serve.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" if err["loc"]
                             else err["msg"].removeprefix("Value error, ") for err in exc.errors())
        raise ConfigError(f"invalid serve settings (params.yaml, {ENV_PREFIX}* variables or flags): {problems}") from exc


def api_keys(settings: ServeSettings) -> frozenset[str]:
    """Accepted keys: lines of serve.api_keys_file (blank lines and # comments skipped) plus TUNEGATE_API_KEYS."""
    keys = [k.strip() for k in os.environ.get(API_KEYS_ENV, "").split(",")]
    if settings.api_keys_file:
        path = Path(settings.api_keys_file)
        if not path.is_file():
            raise ConfigError(f"serve.api_keys_file {path} does not exist")
        keys += [line.strip() for line in path.read_text(encoding="utf-8").splitlines()
                 if not line.lstrip().startswith("#")]
    return frozenset(k for k in keys if k)
