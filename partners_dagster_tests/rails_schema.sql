-- The Teach Computing website's tables that the FutureLearn jobs use, as Rails makes them.
--
-- Source: NCCE/teachcomputing.org, commit ed34645063b4 ("Rm obsolete FL/RPF trailer demo
-- page", the last version with the FutureLearn jobs), file db/schema.rb
-- (ActiveRecord::Schema.define(version: 2023_04_21_125728), with rails 6.1.4.7 and
-- statesman 10.0.0 in Gemfile.lock).
--
-- This is a transcription for tests, not the website's file: it is the DDL that Rails 6.1's
-- PostgreSQL adapter issues for `rails db:schema:load` of those eight tables, every column
-- and index of each, in schema.rb's order and with Rails's spellings:
--   t.string -> character varying        t.text -> text        t.integer -> integer
--   t.float  -> float (double precision) t.boolean -> boolean  t.json -> json
--   t.uuid   -> uuid                     t.text array: true -> text[]
--   t.datetime -> timestamp (without time zone, and without a precision: schema.rb has no
--     `precision: 6` on any of these columns, and the website's later Rails 7 schema.rb
--     dumps them as `precision: nil`. PostgreSQL still keeps microseconds)
--   create_table without id: -> "id" bigserial primary key
--   id: :uuid, default: -> { "gen_random_uuid()" } -> uuid DEFAULT gen_random_uuid() NOT NULL
--   add_foreign_key -> constraint "fk_rails_" + first 10 hex of SHA-256("<table>_<column>_fk")
-- Left out on purpose:
--   * `force: :cascade` (DROP TABLE IF EXISTS ... CASCADE before each CREATE): this file is
--     only ever loaded into a fresh, empty database,
--   * add_foreign_key "user_programme_enrolments", "pathways" (fk_rails_27d48dd25a on
--     pathway_id): pathways is not one of the eight tables,
--   * Rails's own schema_migrations and ar_internal_metadata tables.
-- The file holds no percent sign, and semicolons only where statements end, so it can
-- be run whole or statement by statement.

CREATE EXTENSION IF NOT EXISTS "pgcrypto";
CREATE EXTENSION IF NOT EXISTS "plpgsql";

CREATE TABLE "achievement_transitions" (
  "id" bigserial primary key,
  "to_state" character varying NOT NULL,
  "metadata" json DEFAULT '{}',
  "sort_key" integer NOT NULL,
  "achievement_id" uuid NOT NULL,
  "most_recent" boolean NOT NULL,
  "created_at" timestamp NOT NULL,
  "updated_at" timestamp NOT NULL
);
CREATE UNIQUE INDEX "index_achievement_transitions_parent_most_recent"
  ON "achievement_transitions" ("achievement_id", "most_recent") WHERE most_recent;
CREATE UNIQUE INDEX "index_achievement_transitions_parent_sort"
  ON "achievement_transitions" ("achievement_id", "sort_key");

CREATE TABLE "achievements" (
  "id" uuid DEFAULT gen_random_uuid() NOT NULL PRIMARY KEY,
  "user_id" uuid NOT NULL,
  "activity_id" uuid NOT NULL,
  "created_at" timestamp NOT NULL,
  "updated_at" timestamp NOT NULL,
  "programme_id" uuid,
  "progress" integer DEFAULT 0 NOT NULL
);
CREATE UNIQUE INDEX "index_achievements_on_activity_id_and_user_id"
  ON "achievements" ("activity_id", "user_id");
CREATE INDEX "index_achievements_on_programme_id_and_user_id"
  ON "achievements" ("programme_id", "user_id");

CREATE TABLE "activities" (
  "id" uuid DEFAULT gen_random_uuid() NOT NULL PRIMARY KEY,
  "title" character varying,
  "credit" float,
  "created_at" timestamp NOT NULL,
  "updated_at" timestamp NOT NULL,
  "slug" character varying,
  "category" character varying,
  "stem_course_template_no" character varying,
  "self_certifiable" boolean DEFAULT FALSE,
  "provider" character varying,
  "future_learn_course_uuid" character varying,
  "description" text,
  "self_verification_info" text,
  "uploadable" boolean DEFAULT FALSE,
  "stem_activity_code" character varying,
  "remote_delivered_cpd" boolean DEFAULT FALSE,
  "always_on" boolean DEFAULT FALSE,
  "booking_programme_slug" character varying,
  "retired" boolean DEFAULT FALSE
);
CREATE INDEX "index_activities_on_category"
  ON "activities" ("category");
CREATE UNIQUE INDEX "index_activities_on_future_learn_course_uuid"
  ON "activities" ("future_learn_course_uuid");
CREATE INDEX "index_activities_on_self_certifiable"
  ON "activities" ("self_certifiable");
CREATE UNIQUE INDEX "index_activities_on_stem_course_template_no"
  ON "activities" ("stem_course_template_no");

CREATE TABLE "programme_activities" (
  "id" uuid DEFAULT gen_random_uuid() NOT NULL PRIMARY KEY,
  "programme_id" uuid NOT NULL,
  "activity_id" uuid NOT NULL,
  "created_at" timestamp NOT NULL,
  "updated_at" timestamp NOT NULL,
  "programme_activity_grouping_id" uuid,
  "order" integer
);
CREATE INDEX "index_programme_activities_on_activity_id"
  ON "programme_activities" ("activity_id");
CREATE INDEX "index_programme_activities_on_programme_id"
  ON "programme_activities" ("programme_id");

CREATE TABLE "programmes" (
  "id" uuid DEFAULT gen_random_uuid() NOT NULL PRIMARY KEY,
  "title" character varying,
  "slug" character varying,
  "description" text,
  "created_at" timestamp NOT NULL,
  "updated_at" timestamp NOT NULL,
  "enrollable" boolean DEFAULT FALSE,
  "type" character varying
);
CREATE UNIQUE INDEX "index_programmes_on_slug"
  ON "programmes" ("slug");

CREATE TABLE "user_programme_enrolment_transitions" (
  "id" bigserial primary key,
  "to_state" character varying NOT NULL,
  "metadata" json DEFAULT '{}',
  "sort_key" integer NOT NULL,
  "user_programme_enrolment_id" uuid NOT NULL,
  "most_recent" boolean NOT NULL,
  "created_at" timestamp NOT NULL,
  "updated_at" timestamp NOT NULL
);
CREATE UNIQUE INDEX "index_user_programme_enrolment_transitions_parent_most_recent"
  ON "user_programme_enrolment_transitions" ("user_programme_enrolment_id", "most_recent")
  WHERE most_recent;
CREATE UNIQUE INDEX "index_user_programme_enrolment_transitions_parent_sort"
  ON "user_programme_enrolment_transitions" ("user_programme_enrolment_id", "sort_key");

CREATE TABLE "user_programme_enrolments" (
  "id" uuid DEFAULT gen_random_uuid() NOT NULL PRIMARY KEY,
  "user_id" uuid NOT NULL,
  "programme_id" uuid NOT NULL,
  "created_at" timestamp NOT NULL,
  "updated_at" timestamp NOT NULL,
  "flagged" boolean DEFAULT FALSE,
  "auto_enrolled" boolean DEFAULT FALSE,
  "pathway_id" uuid,
  "completed_pathway_id" uuid
);
CREATE INDEX "index_user_programme_enrolments_on_pathway_id"
  ON "user_programme_enrolments" ("pathway_id");
CREATE UNIQUE INDEX "unique_programme_per_user"
  ON "user_programme_enrolments" ("programme_id", "user_id");
CREATE INDEX "index_user_programme_enrolments_on_programme_id"
  ON "user_programme_enrolments" ("programme_id");
CREATE INDEX "index_user_programme_enrolments_on_user_id"
  ON "user_programme_enrolments" ("user_id");

CREATE TABLE "users" (
  "id" uuid DEFAULT gen_random_uuid() NOT NULL PRIMARY KEY,
  "first_name" character varying,
  "last_name" character varying,
  "email" character varying,
  "last_sign_in_at" timestamp,
  "stem_user_id" character varying,
  "stem_achiever_contact_no" uuid,
  "stem_credentials_expires_at" timestamp,
  "created_at" timestamp NOT NULL,
  "updated_at" timestamp NOT NULL,
  "encrypted_stem_credentials_access_token" character varying,
  "encrypted_stem_credentials_access_token_iv" character varying,
  "encrypted_stem_credentials_refresh_token" character varying,
  "encrypted_stem_credentials_refresh_token_iv" character varying,
  "teacher_reference_number" character varying,
  "stem_achiever_organisation_no" character varying,
  "future_learn_organisation_memberships" text[] DEFAULT '{}',
  "forgotten" boolean DEFAULT FALSE
);
CREATE UNIQUE INDEX "index_users_on_stem_user_id"
  ON "users" ("stem_user_id");
CREATE UNIQUE INDEX "index_users_on_teacher_reference_number"
  ON "users" ("teacher_reference_number");

-- add_foreign_key "achievement_transitions", "achievements", on_delete: :cascade
ALTER TABLE "achievement_transitions" ADD CONSTRAINT "fk_rails_9a98155400"
  FOREIGN KEY ("achievement_id") REFERENCES "achievements" ("id") ON DELETE CASCADE;
-- add_foreign_key "user_programme_enrolment_transitions", "user_programme_enrolments"
ALTER TABLE "user_programme_enrolment_transitions" ADD CONSTRAINT "fk_rails_3b113ac0bf"
  FOREIGN KEY ("user_programme_enrolment_id") REFERENCES "user_programme_enrolments" ("id");
