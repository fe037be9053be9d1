"""initial schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('streams',
    sa.Column('id', sa.String(length=200), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_frame_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('cover_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_streams'))
    )
    op.create_table('frames',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('stream_id', sa.String(length=200), nullable=False),
    sa.Column('channel_id', sa.String(length=200), nullable=False),
    sa.Column('pic_url', sa.String(length=1024), nullable=False),
    sa.Column('pic_full_url', sa.String(length=2048), nullable=False),
    sa.Column('captured_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('file_size', sa.BigInteger(), nullable=False),
    sa.Column('width', sa.Integer(), nullable=False),
    sa.Column('height', sa.Integer(), nullable=False),
    sa.Column('app', sa.String(length=200), nullable=True),
    sa.Column('payload', sa.JSON(), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('available_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('lease_owner', sa.String(length=64), nullable=True),
    sa.Column('lease_expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('processed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('processed_by', sa.String(length=64), nullable=True),
    sa.Column('score', sa.Float(), nullable=True),
    sa.Column('metrics', sa.JSON(), nullable=True),
    sa.CheckConstraint("status IN ('pending', 'processing', 'scored', 'rejected', 'failed')", name=op.f('ck_frames_status')),
    sa.ForeignKeyConstraint(['stream_id'], ['streams.id'], name=op.f('fk_frames_stream_id_streams'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_frames')),
    sa.UniqueConstraint('stream_id', 'pic_url', name=op.f('uq_frames_stream_id_pic_url'))
    )
    with op.batch_alter_table('frames', schema=None) as batch_op:
        batch_op.create_index('ix_frames_status_available_at', ['status', 'available_at'], unique=False)
        batch_op.create_index('ix_frames_stream_id_captured_at', ['stream_id', 'captured_at'], unique=False)

    op.create_table('covers',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('stream_id', sa.String(length=200), nullable=False),
    sa.Column('frame_id', sa.BigInteger(), nullable=True),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('score', sa.Float(), nullable=True),
    sa.Column('captured_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("source IN ('auto', 'override')", name=op.f('ck_covers_source')),
    sa.ForeignKeyConstraint(['frame_id'], ['frames.id'], name=op.f('fk_covers_frame_id_frames'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['stream_id'], ['streams.id'], name=op.f('fk_covers_stream_id_streams'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_covers'))
    )
    with op.batch_alter_table('covers', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_covers_frame_id'), ['frame_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_covers_stream_id'), ['stream_id'], unique=False)

    op.create_table('renditions',
    sa.Column('cover_id', sa.BigInteger(), nullable=False),
    sa.Column('size', sa.String(length=16), nullable=False),
    sa.Column('format', sa.String(length=16), nullable=False),
    sa.Column('key', sa.String(length=300), nullable=False),
    sa.Column('etag', sa.String(length=80), nullable=False),
    sa.Column('content_type', sa.String(length=64), nullable=False),
    sa.Column('width', sa.Integer(), nullable=False),
    sa.Column('height', sa.Integer(), nullable=False),
    sa.Column('byte_size', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['cover_id'], ['covers.id'], name=op.f('fk_renditions_cover_id_covers'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('cover_id', 'size', 'format', name=op.f('pk_renditions'))
    )
    # streams.cover_id and covers.stream_id refer to each other, so the first of the two
    # foreign keys can only be added once both tables exist.
    with op.batch_alter_table('streams', schema=None) as batch_op:
        batch_op.create_foreign_key(
            batch_op.f('fk_streams_cover_id_covers'), 'covers', ['cover_id'], ['id'],
            ondelete='SET NULL',
        )


def downgrade() -> None:
    with op.batch_alter_table('streams', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_streams_cover_id_covers'), type_='foreignkey')
    op.drop_table('renditions')
    with op.batch_alter_table('covers', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_covers_stream_id'))
        batch_op.drop_index(batch_op.f('ix_covers_frame_id'))

    op.drop_table('covers')
    with op.batch_alter_table('frames', schema=None) as batch_op:
        batch_op.drop_index('ix_frames_stream_id_captured_at')
        batch_op.drop_index('ix_frames_status_available_at')

    op.drop_table('frames')
    op.drop_table('streams')
