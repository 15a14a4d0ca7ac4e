"""The id scheme (starburst/_ids.py): every derived id names its task, and the item index reads back."""

from __future__ import annotations

from starburst import _ids


def test_derived_ids_name_their_task_and_read_back():
    task = _ids.new_id()
    assert len(task) == _ids.TASK_ID_BYTES and _ids.new_id() != task
    returns = _ids.return_ids(task, 3)
    assert len(set(returns)) == 3 and all(_ids.task_of(r) == task for r in returns)
    items = [_ids.item_id(task, i) for i in range(5)]
    assert not set(items) & set(_ids.return_ids(task, 1))  # a generator's items never hit its own result
    assert [_ids.item_index(i) for i in items] == list(range(5))
    put = _ids.put_id()
    assert put.endswith(b"\xff\xff\xff\xff") and _ids.task_of(put) != task
