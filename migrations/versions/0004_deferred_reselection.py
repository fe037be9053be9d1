"""deferred reselection: a due time per stream; selection's note per frame

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_DUE = sa.text('reselect_at IS NOT NULL')


def upgrade() -> None:
    # A pending request keeps its time, which has passed: it is due at once, as it was.
    with op.batch_alter_table('streams', schema=None) as batch_op:
        batch_op.alter_column('reselect_requested_at', new_column_name='reselect_at')
    op.create_index('ix_streams_reselect_at', 'streams', ['reselect_at'],
                    postgresql_where=_DUE, sqlite_where=_DUE)
    with op.batch_alter_table('frames', schema=None) as batch_op:
        batch_op.add_column(sa.Column('selection', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('frames', schema=None) as batch_op:
        batch_op.drop_column('selection')
    op.drop_index('ix_streams_reselect_at', table_name='streams')
    with op.batch_alter_table('streams', schema=None) as batch_op:
        batch_op.alter_column('reselect_at', new_column_name='reselect_requested_at')
