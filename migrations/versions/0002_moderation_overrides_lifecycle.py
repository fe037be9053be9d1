"""moderation, overrides, stream lifecycle, audit

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('audit_log',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('actor', sa.String(length=64), nullable=False),
    sa.Column('action', sa.String(length=32), nullable=False),
    sa.Column('stream_id', sa.String(length=200), nullable=True),
    sa.Column('frame_id', sa.BigInteger(), nullable=True),
    sa.Column('detail', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_log'))
    )
    with op.batch_alter_table('audit_log', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_audit_log_stream_id'), ['stream_id'], unique=False)

    op.create_table('moderation_flags',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('stream_id', sa.String(length=200), nullable=False),
    sa.Column('img_path', sa.String(length=1024), nullable=False),
    sa.Column('img', sa.String(length=2048), nullable=False),
    sa.Column('suggestion', sa.String(length=32), nullable=False),
    sa.Column('payload', sa.JSON(), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_moderation_flags')),
    sa.UniqueConstraint('stream_id', 'img_path', name=op.f('uq_moderation_flags_stream_id_img_path'))
    )
    with op.batch_alter_table('frames', schema=None) as batch_op:
        batch_op.add_column(sa.Column('blocked', sa.Boolean(), server_default=sa.text('false'), nullable=False))
        batch_op.add_column(sa.Column('blocked_reason', sa.Text(), nullable=True))

    with op.batch_alter_table('streams', schema=None) as batch_op:
        batch_op.add_column(sa.Column('override_cover_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True))
        batch_op.add_column(sa.Column('override_expires_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('live', sa.Boolean(), server_default=sa.text('false'), nullable=False))
        batch_op.add_column(sa.Column('live_changed_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('reselect_requested_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.create_foreign_key(batch_op.f('fk_streams_override_cover_id_covers'), 'covers', ['override_cover_id'], ['id'], ondelete='SET NULL')



def downgrade() -> None:
    with op.batch_alter_table('streams', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_streams_override_cover_id_covers'), type_='foreignkey')
        batch_op.drop_column('reselect_requested_at')
        batch_op.drop_column('live_changed_at')
        batch_op.drop_column('live')
        batch_op.drop_column('override_expires_at')
        batch_op.drop_column('override_cover_id')

    with op.batch_alter_table('frames', schema=None) as batch_op:
        batch_op.drop_column('blocked_reason')
        batch_op.drop_column('blocked')

    op.drop_table('moderation_flags')
    with op.batch_alter_table('audit_log', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_audit_log_stream_id'))

    op.drop_table('audit_log')
