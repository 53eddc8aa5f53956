# frozen_string_literal: true

require "json"
require "net/http"
require "uri"

module Tasker
  # The +connection+ of Tasker::StepHandler::Api: Faraday when installed, else this small
  # Net::HTTP client with the same verbs (+get(path, params = {}, headers = {})+,
  # +post/put/patch(path, body = nil, headers = {})+, +delete(path, params = {}, headers = {})+).
  class HttpConnection
    Response = Struct.new(:status, :headers, :body)

    # A connection for +{url:, params:, headers:, ssl:}+.
    def self.build(cfg)
      begin
        require "faraday"
      rescue LoadError
        return new(**cfg)
      end
      Faraday.new(url: cfg[:url], params: cfg[:params], headers: cfg[:headers], ssl: cfg[:ssl] || {})
    end

    # +[status, retry_after, body_text]+ of a response: a Faraday response, a Response, or a Hash
    # +{status:, headers:, body:}+ (string or symbol keys).
    def self.parts(response)
      if response.is_a?(Hash)
        status = response[:status] || response["status"]
        headers = response[:headers] || response["headers"] || {}
        body = response.key?(:body) ? response[:body] : response["body"]
      elsif response.respond_to?(:status) && response.respond_to?(:body)
        status = response.status
        headers = response.respond_to?(:headers) ? response.headers : {}
        body = response.body
      else
        raise Tasker::PermanentError, "process must return an HTTP response or {status:, headers:, body:}, got #{response.class}"
      end
      raise Tasker::PermanentError, "the response has no integer status (got #{status.inspect})" unless status.is_a?(Integer)

      retry_after = headers.to_h.find { |k, _| k.to_s.casecmp?("retry-after") }&.last
      body = body.is_a?(String) ? body : JSON.generate(body) unless body.nil?
      [status, retry_after&.to_s, body.to_s]
    end

    def initialize(url:, params: {}, headers: {}, ssl: nil)
      @base = URI.parse(url)
      @params = params || {}
      @headers = headers || {}
      @ssl = ssl || {}
    end

    def get(path = nil, params = {}, headers = {})
      request(Net::HTTP::Get, path, params, nil, headers)
    end

    def delete(path = nil, params = {}, headers = {})
      request(Net::HTTP::Delete, path, params, nil, headers)
    end

    def post(path = nil, body = nil, headers = {})
      request(Net::HTTP::Post, path, {}, body, headers)
    end

    def put(path = nil, body = nil, headers = {})
      request(Net::HTTP::Put, path, {}, body, headers)
    end

    def patch(path = nil, body = nil, headers = {})
      request(Net::HTTP::Patch, path, {}, body, headers)
    end

    private

    def request(klass, path, params, body, headers)
      uri = path.nil? ? @base.dup : URI.join(@base.to_s.end_with?("/") ? @base.to_s : "#{@base}/", path.to_s.delete_prefix("/"))
      query = URI.decode_www_form(uri.query || "") + @params.merge(params || {}).map { |k, v| [k.to_s, v.to_s] }
      uri.query = query.empty? ? nil : URI.encode_www_form(query)
      req = klass.new(uri)
      @headers.merge(headers || {}).each { |k, v| req[k.to_s] = v.to_s }
      req.body = body.is_a?(String) ? body : JSON.generate(body) unless body.nil?
      http = Net::HTTP.new(uri.host, uri.port)
      http.use_ssl = uri.scheme == "https"
      http.verify_mode = OpenSSL::SSL::VERIFY_NONE if http.use_ssl? && (@ssl["verify"] == false || @ssl[:verify] == false)
      res = http.start { |h| h.request(req) }
      Response.new(res.code.to_i, res.each_header.to_h, res.body.to_s)
    end
  end
end
