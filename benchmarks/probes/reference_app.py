"""The bare FastAPI app served by uvicorn beside ours (``reference_app:app``): the HTTP floor."""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from benchmarks.probes import _shared
else:
    import _shared  # uvicorn's --app-dir puts this folder on sys.path

app = _shared.bare_app()


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}
