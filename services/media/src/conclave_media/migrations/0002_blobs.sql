-- Metadata of encrypted attachment blobs; the ciphertext itself is in the JetStream object
-- store bucket `conclave_media`. See docs/data-map.md, section "media schema", for what each
-- column is for, how long it lives and what deletes it.
--
-- The media id (the download capability) is never stored: only its SHA-256, so neither a
-- database dump nor a backup lets anyone download a blob.
CREATE TABLE blobs (
    id_hash bytea PRIMARY KEY CHECK (length(id_hash) = 32),
    -- Uploading account (the account id from its access token).
    account_id text NOT NULL,
    size_bytes bigint NOT NULL CHECK (size_bytes > 0),
    chunk_size integer NOT NULL CHECK (chunk_size BETWEEN 65536 AND 1048576),
    -- SHA-256 of the whole ciphertext, declared at CreateUpload, verified on completion.
    ciphertext_sha256 bytea NOT NULL CHECK (length(ciphertext_sha256) = 32),
    -- 1 = uploading, 2 = complete (verified; the only state Download serves), 3 = deleted
    -- by its uploader (chunks gone; the row stays until expires_at so a repeated
    -- DeleteMedia still succeeds for the uploader, then the purge removes it).
    state smallint NOT NULL CHECK (state IN (1, 2, 3)),
    -- Chunks stored so far, in order: the next offset is chunks_received * chunk_size.
    chunks_received integer NOT NULL DEFAULT 0 CHECK (chunks_received >= 0),
    created_at timestamptz NOT NULL,
    completed_at timestamptz,
    -- Uploading: when the incomplete upload is discarded; complete: when the blob expires.
    expires_at timestamptz NOT NULL
);
-- Quota sums and account erasure.
CREATE INDEX blobs_account ON blobs (account_id);
-- The purge job walks expired rows oldest first.
CREATE INDEX blobs_expires ON blobs (expires_at);
