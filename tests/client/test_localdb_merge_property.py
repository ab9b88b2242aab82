"""Property: interleaved server changes never hide a pending edit, and a full rejection of the
queue leaves exactly the server's newest rows, whatever the interleaving."""

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from syncd.client import EntitySchema, LocalDB, UploadResult

NOTE = EntitySchema(
    name="note",
    key="id",
    columns=[("id", "integer"), ("title", "text"), ("body", "text")],
    writable=["title", "body"],
)
KEYS = st.integers(min_value=1, max_value=4)
TEXT = st.text(alphabet="abc", min_size=1, max_size=3)
ACTIONS = st.lists(
    st.one_of(
        st.tuples(st.just("server_upsert"), KEYS, TEXT, TEXT),
        st.tuples(st.just("server_delete"), KEYS),
        st.tuples(st.just("local_update"), KEYS, TEXT),
        st.tuples(st.just("local_delete"), KEYS),
    ),
    max_size=25,
)


def play(
    db: LocalDB, actions: list[tuple[Any, ...]]
) -> tuple[dict[int, tuple[Any, ...]], dict[int, str | None]]:
    """Run the actions; return the server's newest rows and the device's last edit per key."""
    server: dict[int, tuple[Any, ...]] = {}
    edits: dict[int, str | None] = {}  # last local title, None for a local delete
    version = 0
    for action in actions:
        kind, key = action[0], action[1]
        if kind == "server_upsert":
            version += 1
            server[key] = (key, action[2], action[3], version)
            db.apply_batch([("note", [list(server[key])], [])], version.to_bytes(4, "big"))
        elif kind == "server_delete":
            server.pop(key, None)
            db.apply_batch([("note", [], [key])], None)
        elif db.get("note", key) is not None:
            if kind == "local_update":
                db.update("note", key, {"title": action[2]})
                edits[key] = action[2]
            else:
                db.delete("note", key)
                edits[key] = None
    return server, edits


@settings(max_examples=150, deadline=None)
@given(ACTIONS)
def test_pending_edits_stay_visible_and_rejection_restores_server(
    actions: list[tuple[Any, ...]],
) -> None:
    with LocalDB.open(":memory:") as db:
        db.apply_schema([NOTE], "fp")
        server, edits = play(db, actions)
        queued = db.pending_count()
        for key, title in edits.items():
            row = db.get("note", key)
            if title is None:
                assert row is None
            else:
                assert row is not None
                assert row[1] == title
        while (batch := db.next_upload_batch(3)) is not None:
            refusal = UploadResult("rejected", code="NOT_WRITABLE", reason="read-only")
            db.complete_upload(batch.batch_id, [refusal for _ in batch.ops])
        assert db.rows("note") == [server[k] for k in sorted(server)]
        assert len(db.errors()) == queued
        assert db.pending_count() == 0
