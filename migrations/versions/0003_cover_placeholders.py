"""cover placeholders; renditions found by storage key

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable: covers rendered before this revision have no placeholder, and computing
    # one would mean reading every stored rendition during the migration.
    with op.batch_alter_table('covers', schema=None) as batch_op:
        batch_op.add_column(sa.Column('placeholder_color', sa.String(length=7), nullable=True))
        batch_op.add_column(sa.Column('placeholder_blurhash', sa.String(length=64), nullable=True))
    # /r/<digest> URLs look a rendition up by its key (is its cover's frame blocked?).
    op.create_index('ix_renditions_key', 'renditions', ['key'])


def downgrade() -> None:
    op.drop_index('ix_renditions_key', table_name='renditions')
    with op.batch_alter_table('covers', schema=None) as batch_op:
        batch_op.drop_column('placeholder_blurhash')
        batch_op.drop_column('placeholder_color')
