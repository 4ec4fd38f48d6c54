# frozen_string_literal: true

# The website's side of the follow-up jobs, for the tests: Debian's Ruby 3.1 with ActiveJob 6.1,
# Sidekiq 6, GlobalID and redis-rb. The job classes are stubs with the website's exact
# `perform` signatures; each records what it received.
#
#   ruby sidekiq_consumer.rb enqueue   # the six jobs through ActiveJob's own perform_later
#   ruby sidekiq_consumer.rb consume   # move scheduled jobs, run every queued job, like Sidekiq
#
# Environment: REDIS_URL; PROGRAMMES (JSON list of {"id", "type", "slug"}: the Programmes
# GlobalID can locate); GLOBALID_APP; for `enqueue`, FIXTURE (JSON: programme_id, user_id,
# achievement_id, activity_id); for `consume`, OUTPUT (path of the JSON written).

require "json"
require "logger"
require "active_support"
require "active_support/time"
require "active_job"
require "global_id"
require "sidekiq"
require "sidekiq/api"
require "sidekiq/fetch"
require "sidekiq/processor"
require "sidekiq/scheduled"

Redis.silence_deprecations = true
REDIS_URL = ENV.fetch("REDIS_URL")
Sidekiq.redis = { url: REDIS_URL }
Sidekiq.logger.level = Logger::WARN
# As the website's initializer (`default_job_options` is Sidekiq 6.5's name for it).
if Sidekiq.respond_to?(:default_job_options=)
  Sidekiq.default_job_options = { retry: false }
else
  Sidekiq.default_worker_options = { retry: false }
end

ActiveJob::Base.queue_adapter = :sidekiq
ActiveJob::Base.logger = Logger.new(nil)
# What sidekiq/rails.rb does for a Rails app: ActiveJob classes answer sidekiq_options.
ActiveJob::Base.include(::Sidekiq::Worker::Options) unless ActiveJob::Base.respond_to?(:sidekiq_options)
Time.zone_default = ActiveSupport::TimeZone["UTC"] # the website's config.time_zone
I18n.available_locales = [:en]
I18n.locale = :en
GlobalID.app = ENV.fetch("GLOBALID_APP", "teach-computing")

# -- the website's models, as far as GlobalID needs them ------------------------------------

class Programme
  include GlobalID::Identification

  RECORDS = JSON.parse(ENV.fetch("PROGRAMMES", "[]")).to_h { |row| [row.fetch("id").to_s, row] }

  attr_reader :id, :slug

  def initialize(id, slug)
    @id = id
    @slug = slug
  end

  # As ActiveRecord's STI `find`: the row must exist and be of this class or a subclass.
  def self.find(id)
    row = RECORDS.fetch(id.to_s) { raise KeyError, "Couldn't find #{name} with 'id'=#{id}" }
    klass = Object.const_get(row["type"] || "Programme")
    raise KeyError, "Couldn't find #{name} with 'id'=#{id} (it is a #{klass})" unless klass <= self

    klass.new(row["id"], row["slug"])
  end
end

module Programmes
  class PrimaryCertificate < Programme; end
  class SecondaryCertificate < Programme; end
  class CSAccelerator < Programme; end
end

# -- the website's jobs: exact perform signatures, recording what arrived --------------------

RECEIVED = []

def describe(value)
  case value
  when Programme
    { "programme" => { "class" => value.class.name, "id" => value.id, "slug" => value.slug,
                       "gid" => value.to_global_id.to_s } }
  when Hash
    { "hash" => value.map { |key, inner| [key.to_s, key.class.name, describe(inner)] } }
  else
    { "value" => value, "class" => value.class.name }
  end
end

class ApplicationJob < ActiveJob::Base
  queue_as :default

  def record(arguments, keywords = {})
    RECEIVED << {
      "job_class" => self.class.name,
      "job_id" => job_id,
      "provider_job_id" => provider_job_id,
      "executions" => executions,
      "queue_name" => queue_name,
      "locale" => locale,
      "timezone" => timezone,
      "arguments" => arguments.map { |value| describe(value) },
      "keywords" => keywords.to_h { |key, value| [key.to_s, describe(value)] }
    }
  end
end

class CertificatePendingTransitionJob < ApplicationJob
  def perform(programme, user_id, meta)
    record([programme, user_id, meta])
  end
end

class AssessmentEligibilityJob < ApplicationJob
  def perform(user_id)
    record([user_id])
  end
end

class IssueBadgeJob < ApplicationJob
  def perform(achievement_id)
    record([achievement_id])
  end
end

class CompleteAchievementEmailJob < ApplicationJob
  def perform(user_id, activity_id)
    record([user_id, activity_id])
  end
end

module CSAccelerator
  class CheckNextStepsJob < ApplicationJob
    def perform(achievement_id)
      record([achievement_id])
    end
  end

  class AutoEnrolJob < ApplicationJob
    def perform(achievement_id:)
      record([], { achievement_id: achievement_id })
    end
  end
end

# -- commands -----------------------------------------------------------------------------

def enqueue
  fixture = JSON.parse(ENV.fetch("FIXTURE"))
  programme = Programme.find(fixture.fetch("programme_id"))
  user_id = fixture.fetch("user_id")
  achievement_id = fixture.fetch("achievement_id")
  # As the website queues them (see docs/follow-up-jobs.md).
  CertificatePendingTransitionJob.set(wait: 1.minute)
                                 .perform_later(programme, user_id, source: "partners_dagster")
  AssessmentEligibilityJob.perform_later(user_id)
  IssueBadgeJob.set(wait: 2.minutes).perform_later(achievement_id)
  CSAccelerator::CheckNextStepsJob.set(wait: 2.days).perform_later(achievement_id)
  CompleteAchievementEmailJob.perform_later(user_id, fixture.fetch("activity_id"))
  CSAccelerator::AutoEnrolJob.perform_later(achievement_id: achievement_id)
end

class NoManager
  def processor_stopped(_processor); end

  def processor_died(_processor, _reason); end
end

def consume
  errors = []
  Sidekiq.redis do |conn|
    # Make every scheduled job due, then let Sidekiq's own poller step move them.
    conn.zrange("schedule", 0, -1).each { |job| conn.zadd("schedule", 0, job, xx: true) }
  end
  Sidekiq::Scheduled::Enq.new.enqueue_jobs
  queue = Sidekiq::Queue.new("default")
  processor = Sidekiq::Processor.new(NoManager.new, { fetch: Sidekiq::BasicFetch.new({ queues: ["default"] }) })
  100.times do
    break if queue.size.zero?

    begin
      # What each of Sidekiq's processor threads does in its loop: fetch, then run the job
      # through the server middleware, the job logger and the retry handler.
      processor.send(:process_one)
    rescue Exception => e # rubocop:disable Lint/RescueException -- record every failure
      errors << { "error" => e.class.name, "message" => e.message[0, 500] }
    end
  end
  File.write(ENV.fetch("OUTPUT"), JSON.pretty_generate({
    "received" => RECEIVED,
    "errors" => errors,
    "left_in_queue" => queue.size,
    "left_in_schedule" => Sidekiq::ScheduledSet.new.size,
    "versions" => {
      "ruby" => RUBY_VERSION, "activejob" => ActiveJob::VERSION::STRING,
      "sidekiq" => Sidekiq::VERSION, "redis" => Redis::VERSION
    }
  }))
end

case ARGV.first
when "enqueue" then enqueue
when "consume" then consume
else
  warn "usage: sidekiq_consumer.rb enqueue|consume"
  exit 2
end
